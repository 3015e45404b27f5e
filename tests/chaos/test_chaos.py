"""The chaos test: a three-stage pipeline under kills, zombies, rebalances and broker stalls.

Short mode runs in CI. Long mode: KWHEEL_CHAOS=long (>= 1,000,000 records, >= 50 faults).
Replay a run with KWHEEL_CHAOS_SEED=<seed printed at the start>. Every action the driver
takes is logged with its time to chaos.log in the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import defaultdict

import pytest

from kwheel.config import WorkerConfig
from kwheel.injector import BoundedDisorder, Injector
from kwheel.testing.broker import MemorySampler
from kwheel.testing.follow import TopicFollower
from kwheel.testing.processes import WorkerProcess, wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from kwheel.watermarks.control import Control
from kwheel.watermarks.upstream import WatermarkTable
from tests.chaos.pipeline import chaos, region_of
from tests.helpers import (
    FirstCopies,
    records_behind_a_usable_watermark,
    setup_topics,
)

REF = "tests.chaos.pipeline:chaos"
LONG = os.environ.get("KWHEEL_CHAOS") == "long"
RECORDS = 1_000_000 if LONG else 50_000
MIN_FAULTS = 50 if LONG else 10
# records per second injected. Long mode at 4000/s outran this 2-core machine (shared
# with other work): the stages fell behind, their 500-record batches outlasted the 6 s
# transaction timeout and aborted over and over (docs/reliability.md, seed 162075771).
RATE = 800 if LONG else 1000
USERS = 400
DISORDER_MS = 200
COMPUTATIONS = ("user_windows", "region_windows")
# Sessions outlive a broker stall, so a stall is a stall (clients retry), not a rebalance storm.
# Transactions time out sooner than a stall lasts, so stalls abort transactions whose
# watermark was raised. The last stage lags (work per record), so faults meet its backlog.
WORKER_ENV = {
    "KWHEEL_SESSION_TIMEOUT_MS": "30000",
    "KWHEEL_TRANSACTION_TIMEOUT_MS": "6000",
    "KWHEEL_CHAOS_LAG_MS": "0" if LONG else "2",
}
# Transactions of at most 500 records, so faults land inside open ones. Long mode commits
# a backlog once a second rather than every 100 ms, so a key's changelog record covers more
# of its records: the embedded broker holds every record in memory and snapshots it all to
# JSON as it runs, and with 100 ms the changelog nearly matched the input, the broker
# peaked at 20 GB of this machine's 24 and its CPU left the workers draining at 200/s.
# (5000-record batches as well made the coordinator livelock on the first rebalances.)
BATCH_SIZE = "500"
if LONG:
    WORKER_ENV["KWHEEL_COMMIT_INTERVAL_MS"] = "1000"
# The driver reads every repartition record for its lateness check, so it deletes them
# itself once read and consumed: kwheel's own purge (tests/integration/
# test_repartition_purge.py) deleted records the driver had not read yet (seed 550759962).
WORKER_ENV["KWHEEL_REPARTITION_PURGE_INTERVAL_MS"] = "0"


class Driver:
    """Starts and abuses the workers; logs every action."""

    def __init__(self, kafka, name, workers, tmp_path, rng):
        self.kafka, self.name, self.make, self.tmp, self.rng = kafka, name, workers, tmp_path, rng
        self.log_file = open(tmp_path / "chaos.log", "a", buffering=1)
        self.static: dict[str, WorkerProcess] = {}
        self.dynamic: list[WorkerProcess] = []
        self.faults = defaultdict(int)
        self.group_restarts = 0  # driver remedies for the embedded broker's coordinator
        self.generation = defaultdict(int)
        self.t0 = time.monotonic()
        self.injecting = threading.Event()
        self.restart_injector = threading.Event()
        self._note_lock = threading.Lock()  # the follower's thread notes too

    def note(self, what: str) -> None:
        with self._note_lock:
            self.log_file.write(f"{time.monotonic() - self.t0:8.2f}s {what}\n")

    def start(self, slot: str, fresh_state: bool = False) -> WorkerProcess:
        comp = slot.rsplit("-", 1)[0]
        self.generation[slot] += 1
        g = self.generation[slot]
        state = self.tmp / (f"state-{slot}-{g}" if fresh_state else f"state-{slot}")
        w = self.make(
            REF,
            self.name,
            slot=slot,
            state_dir=state,
            tag=f"{slot}.{g}",
            args=["--computation", comp, "--batch-size", BATCH_SIZE],
            env=WORKER_ENV,
        )
        self.static[slot] = w
        self.note(
            f"start {slot} (gen {g}, pid {w.pid}, {'fresh' if fresh_state else 'kept'} state)"
        )
        return w

    def supervise(self) -> None:
        """Restart a slot whose process ended on its own, as systemd or Kubernetes would
        (a worker exits when it finds itself fenced or its broker session lost for good)."""
        for slot, w in sorted(self.static.items()):
            if (
                not w.alive()
                and w.proc.returncode is not None
                and not getattr(w, "stopped_by_driver", False)
            ):
                tail = [line for line in w.log().splitlines() if line.startswith("kwheel: error")][
                    -1:
                ]
                self.note(
                    f"{slot} (pid {w.pid}) exited by itself with {w.proc.returncode}: {tail}; restarting it"
                )
                w.stopped_by_driver = True
                self.start(slot)

    def start_all(self) -> None:
        # one at a time: the embedded broker's coordinator can livelock when several static
        # members join an empty group at once (PREPARING_REBALANCE for ever)
        for comp in COMPUTATIONS:
            for i in range(3):
                self.start(f"{comp}-{i}")
                self.settle()

    # ---- faults ----------------------------------------------------------------------------
    def kill(self) -> None:
        slot = self.rng.choice(sorted(self.static))
        w = self.static[slot]
        w.stopped_by_driver = True
        w.kill()
        self.note(f"SIGKILL {slot} (pid {w.pid})")
        self.start(slot, fresh_state=self.rng.random() < 0.3)

    def zombie(self) -> None:
        slot = self.rng.choice(sorted(self.static))
        old = self.static[slot]
        old.stopped_by_driver = True
        old.pause()
        self.note(f"SIGSTOP {slot} (pid {old.pid}): it becomes a zombie")
        new = self.start(slot, fresh_state=True)  # restarted elsewhere: the hung one holds its disk
        try:
            wait_until(
                lambda: "assigned and ready" in new.log() or not new.alive(),
                60,
                f"{slot}'s replacement to take over",
            )
        except (
            TimeoutError
        ):  # seen on the embedded broker: the coordinator holds the zombie's place
            self.note(f"{slot}'s replacement got no partitions in 60 s; resuming the zombie anyway")
        old.resume()
        self.note(f"SIGCONT {slot} zombie (pid {old.pid})")
        # One of the two must give up, saying it was fenced. On Kafka it is the zombie; the
        # embedded broker's coordinator sometimes lets the resumed zombie rejoin, and then
        # the zombie (as a new incarnation) fences its replacement instead.
        loser = wait_until(
            lambda: next((w for w in (old, new) if not w.alive()), None),
            120 if LONG else 60,
            f"the zombie {slot} or its replacement to stop",
        )
        winner = new if loser is old else old
        rc = loser.wait(10)
        self.note(
            f"{'zombie' if loser is old else 'replacement'} of {slot} (pid {loser.pid}) exited with {rc}"
        )
        assert rc != 0 and "fenced" in loser.log(), (
            f"{slot}: pid {loser.pid} stopped without saying it was fenced"
        )
        self.static[slot] = winner
        winner.stopped_by_driver = False

    def add(self) -> None:
        comp = self.rng.choice(COMPUTATIONS)
        w = self.make(
            REF,
            self.name,
            tag=f"dyn-{comp}-{len(self.dynamic)}",
            args=["--computation", comp, "--batch-size", BATCH_SIZE],
            env=WORKER_ENV,
        )
        self.dynamic.append(w)
        self.note(f"add dynamic {comp} worker (pid {w.pid})")

    def remove(self) -> None:
        if not self.dynamic:
            return self.add()
        w = self.dynamic.pop(self.rng.randrange(len(self.dynamic)))
        if not w.alive():  # it ended on its own: fenced by a newer owner of one of its tasks
            rc = w.proc.returncode
            tail = [line for line in w.log().splitlines() if line.startswith("kwheel: error")][-1:]
            self.note(
                f"remove dynamic worker (pid {w.pid}): it had exited by itself with {rc}: {tail}"
            )
            assert rc != 0 and tail and "fenced" in tail[0], w.log()[-3000:]
            return
        rc = w.stop(60)
        self.note(f"remove dynamic worker (pid {w.pid}) with SIGTERM: exit {rc}")
        assert rc == 0, w.log()[-3000:]

    def injector(self) -> None:
        """Kill the injector (no flush, no final watermark) and start it again under its
        instance name, re-sending from before what it last flushed: at-least-once."""
        if not self.injecting.is_set():
            return self.kill()
        self.restart_injector.set()
        wait_until(
            lambda: not self.restart_injector.is_set() or not self.injecting.is_set(),
            30,
            "the injector to restart",
        )
        self.note("injector killed and restarted")

    def stall(self) -> None:
        if not self.kafka.embedded:
            return self.kill()
        seconds = self.rng.uniform(10, 20) if LONG else 10
        self.note(f"SIGSTOP broker for {seconds:.1f}s")
        self.kafka.pause()
        try:
            time.sleep(seconds)  # the fault itself: the broker is frozen this long
        finally:
            self.kafka.resume()
        self.note("SIGCONT broker")

    def fault(self, kind: str | None = None) -> None:
        kind = kind or self.rng.choice(["kill", "kill", "zombie", "add", "remove", "injector"])
        getattr(self, kind)()
        self.faults[kind] += 1
        if kind == "kill" and self.rng.random() < 0.3:
            self.note("not settling: the next fault may come while the group recovers")
            return
        self.settle()

    def settle(self) -> None:
        """Wait until every group is stable with exactly the live workers as members and
        every partition assigned: one membership change at a time, as an operator would."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.kafka.bootstrap, "log_level": 0})
        p = chaos(self.name).validate()

        def settled() -> bool:
            self.supervise()
            for comp in COMPUTATIONS:
                group = p.group_id(comp)
                d = admin.describe_consumer_groups([group])[group].result(timeout=10)
                live = sum(1 for s, w in self.static.items() if s.startswith(comp) and w.alive())
                live += sum(1 for w in self.dynamic if w.alive() and comp in " ".join(w.args))
                if live == 0:
                    continue  # not started yet
                # members are named kwheel-<slot>-<pid>; the embedded broker keeps members of
                # dead processes for ever, which is harmless as long as they own nothing
                pids = {w.pid for w in [*self.static.values(), *self.dynamic] if w.alive()}
                owned = {
                    (tp.topic, tp.partition)
                    for m in d.members
                    if int(m.client_id.rsplit("-", 1)[-1]) in pids
                    for tp in m.assignment.topic_partitions
                }
                members = sum(1 for m in d.members if int(m.client_id.rsplit("-", 1)[-1]) in pids)
                if (
                    d.state.name != "STABLE"
                    or members != live
                    or len(owned) != p.computations[comp].partitions
                ):
                    last[0] = (
                        f"{comp}: {d.state.name}, {members} live members ({len(d.members)} in all) for "
                        f"{live} live workers, {len(owned)} of {p.computations[comp].partitions} partitions owned"
                    )
                    return False
            return True

        started = time.monotonic()
        last = [""]
        try:
            wait_until(settled, 120, "the consumer groups to settle", interval_s=0.5)
        except TimeoutError:
            self.note(f"groups did not settle: {last[0]}")
            self.restart_group(last[0].split(":")[0])
            try:
                wait_until(
                    settled,
                    120,
                    "the consumer groups to settle after restarting a group",
                    interval_s=0.5,
                )
            except TimeoutError:
                self.note(f"groups did not settle: {last[0]}")
                raise
        self.note(f"groups settled after {time.monotonic() - started:.1f}s")

    def restart_group(self, comp: str) -> None:
        """The embedded broker's coordinator can hold a group in PREPARING_REBALANCE for
        good (docs/reliability.md). What an operator would try: restart its workers one at
        a time, so every member rejoins afresh. Counted apart from the faults."""
        self.note(f"restarting {comp}'s workers one at a time")
        self.group_restarts += 1
        for slot in sorted(s for s in self.static if s.startswith(comp)):
            w = self.static[slot]
            w.stopped_by_driver = True
            try:
                rc = w.stop(60)
            except TimeoutError:
                rc = "killed after 60 s"
            self.note(f"stop {slot}: exit {rc}")
            self.start(slot)
        for w in [w for w in self.dynamic if comp in " ".join(w.args)]:
            self.dynamic.remove(w)
            try:
                rc = w.stop(60)
            except TimeoutError:
                rc = "killed after 60 s"
            self.note(f"remove dynamic worker (pid {w.pid}) with SIGTERM: exit {rc}")

    def stop_all(self) -> None:
        for slot, w in sorted(self.static.items()):
            w.stopped_by_driver = True
            rc = w.stop(90)
            self.note(f"stop {slot}: exit {rc}")
            assert rc == 0, f"{slot} exited with {rc}: {w.log()[-3000:]}"
        while self.dynamic:
            self.remove()


def inject(kafka, p, rng, stop: threading.Event, out: dict, d: Driver) -> None:
    """Inject RECORDS events at RATE per second with bounded disorder; publish the watermark.
    When the driver asks, the injector is killed and restarted (``Driver.injector``)."""
    cfg = WorkerConfig(bootstrap_servers=kafka.bootstrap)
    t0 = (
        int(time.time()) - RECORDS // 100 - 60
    ) * 1000  # ~10 ms of event time per record, in the past
    events = []
    for i in range(RECORDS):
        ts = t0 + i * 10 + rng.randrange(DISORDER_MS // 2)
        events.append((f"u{rng.randrange(USERS)}", ts, rng.randrange(1, 100)))
    out["events"] = events

    def start():
        return Injector(
            p, "events", ["events"], cfg, instance="chaos", publish_interval_ms=None
        ), BoundedDisorder(DISORDER_MS)

    inj, policy = start()
    d.injecting.set()
    started = time.monotonic()
    flushed = 0  # every record before this one was delivered (publish flushes)
    i = 0
    while i < len(events) and not stop.is_set():
        if d.restart_injector.is_set():
            inj, policy = start()  # the old one is dropped unflushed, as a killed process would
            i = max(0, flushed - rng.randrange(300))  # re-sent copies carry the same ids
            d.restart_injector.clear()
        user, ts, amount = events[i]
        inj.send(
            "events", user, {"user": user, "amount": amount}, timestamp=ts, id=f"e{i}".encode()
        )
        inj.advance(policy.observe(ts))
        i += 1
        if i % 200 == 0:
            inj.publish()
            flushed = i
            ahead = i / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # pacing the load, not synchronisation
    inj.close(final=True)
    d.injecting.clear()


def reference(events):
    users = defaultdict(lambda: [0, 0])
    for user, ts, amount in events:
        u = users[(user, ts // 1000 * 1000)]
        u[0] += 1
        u[1] += amount
    regions = defaultdict(lambda: [0, 0, 0])
    for (user, start), (n, s) in users.items():
        r = regions[
            (region_of(user), start + 1000)
        ]  # user totals are stamped at their window's end
        r[0] += 1
        r[1] += n
        r[2] += s
    return {k: tuple(v) for k, v in users.items()}, {k: tuple(v) for k, v in regions.items()}


class Outputs:
    """One output stream as the end-of-run check needs it, kept as its records are read
    (a ``TopicFollower`` handler): its record ids, the first value of each window, and
    the windows emitted more than once."""

    def __init__(self, topic: str, unpack):
        self.topic, self.unpack = topic, unpack
        self.ids: set[bytes | None] = set()
        self.repeated_ids = 0
        self.got: dict = {}
        self.twice: list = []  # windows emitted again (a timer fired twice)

    def __call__(self, r) -> None:
        if r.id in self.ids:
            self.repeated_ids += 1
        self.ids.add(r.id)
        k, v = self.unpack(json.loads(r.value))
        if k in self.got:
            self.twice.append(k)
        else:
            self.got[k] = v

    def check(self, want) -> None:
        topic, got = self.topic, self.got
        assert not self.repeated_ids, f"{topic}: {self.repeated_ids} record ids appear twice"
        assert not self.twice, (
            f"{topic}: window {self.twice[0]} emitted twice (a timer fired twice)"
        )
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])[:5]
        assert not (missing or extra or wrong), (
            f"{topic}: missing {missing}, unexpected {extra}, wrong {[(k, got[k], want[k]) for k in wrong]}"
        )


class Controls:
    """The watermark topic as readers keep it (``read_controls``), read as it is written."""

    def __init__(self):
        self.table = WatermarkTable()
        self.usable: list[Control] = []
        self.latest: dict[str, int] = {}

    def __call__(self, r) -> None:
        c = Control.decode(r.value)
        if self.table.add(c):
            self.usable.append(c)
            self.latest[c.producer] = c.watermark

    def latest_watermark(self, prefix: str) -> int:
        """``latest_watermark`` of what was read so far (``latest`` is that fold, kept up)."""
        latest = list(self.latest.items())  # one step under the GIL: the follower adds to it
        mins = [w for producer, w in latest if producer.startswith(prefix)]
        return min(mins) if mins else MIN_WATERMARK


class Collected:
    """What the end-of-run checks need, read while the pipeline runs: the driver deletes
    source and output records once read (and, for a source, once its group committed past
    them), so the embedded broker, which holds every record in memory, stays small."""

    def __init__(self, p):
        topic = {s: p.streams[s].topic for s in p.streams}
        self.user_totals = Outputs(
            topic["user_totals"], lambda v: ((v["user"], v["start"]), (v["n"], v["sum"]))
        )
        self.region_totals = Outputs(
            topic["region_totals"],
            lambda v: ((v["region"], v["start"]), (v["users"], v["n"], v["sum"])),
        )
        self.greeted: list[str] = []
        self.controls = Controls()
        # each stage's input topics, for records_behind_a_usable_watermark
        self.inputs = {ti.topic: FirstCopies() for c in COMPUTATIONS for ti in p.task_inputs(c)}
        self.handlers = {
            **self.inputs,
            self.user_totals.topic: self.user_totals,
            self.region_totals.topic: self.region_totals,
            topic["greetings"]: lambda r: self.greeted.append(json.loads(r.value)["user"]),
            p.watermark_topic(): self.controls,
        }
        # what the driver deletes: the pipeline's streams (its source and its outputs) and
        # its repartition topic, each below what the driver read and what every group
        # reading it committed. Changelogs (restores need them) and the watermark topic
        # are kept.
        self.purge = {
            t: [p.group_id(c) for c in COMPUTATIONS if t in {ti.topic for ti in p.task_inputs(c)}]
            for t in [*topic.values(), *self.inputs]
        }
        self.sizes_of = [p.changelog_topic(c) for c in COMPUTATIONS]


def gb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def test_chaos(kafka, name, workers, tmp_path):
    seed = int(os.environ.get("KWHEEL_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed={seed} records={RECORDS} long={LONG}")
    began = time.monotonic()
    rng = random.Random(seed)
    p = chaos(name)
    setup_topics(kafka.bootstrap, p)
    d = Driver(kafka, name, workers, tmp_path, random.Random(rng.random()))
    d.note(f"seed {seed}")
    memory = MemorySampler(kafka.broker).start() if kafka.embedded else None
    got = Collected(p)
    follower = TopicFollower(
        kafka.bootstrap,
        got.handlers,
        purge=got.purge,
        purge_interval_s=10,
        note=lambda line: d.note(
            f"{line}; broker RSS {gb(memory.last) if memory else 'n/a'}"
            f" (peak {gb(memory.peak) if memory else 'n/a'})"
        ),
        sizes_of=got.sizes_of,
    ).start()
    try:
        d.start_all()
        d.settle()
        stop, out = threading.Event(), {}
        feeder = threading.Thread(
            target=inject, args=(kafka, p, random.Random(rng.random()), stop, out, d), daemon=True
        )
        feeder.start()
        try:
            interval = (RECORDS / RATE) / (MIN_FAULTS + 2)
            d.fault("stall")
            mid_stall = MIN_FAULTS // 2
            while feeder.is_alive():
                feeder.join(interval * d.rng.uniform(0.5, 1.0))
                follower.check()
                if feeder.is_alive():
                    d.fault(
                        "stall" if sum(d.faults.values()) == mid_stall else None
                    )  # one with batches open
            while sum(d.faults.values()) < MIN_FAULTS:
                d.fault()
            d.note(f"injection done; faults {dict(d.faults)}; group restarts {d.group_restarts}")
            wait_until(
                lambda: (
                    follower.check()
                    or got.controls.latest_watermark("task:region_windows/") == MAX_WATERMARK
                ),
                180 if not LONG else 1800,
                "the last stage to see the end of input",
            )
            d.note("the last stage saw the end of input")
            d.stop_all()
            follower.wait_caught_up(120)
            d.note(f"the follower read every committed record; {follower.records_deleted} deleted")
        except BaseException:
            stop.set()
            print((tmp_path / "chaos.log").read_text())
            raise
    finally:
        follower.close()
        if memory:
            memory.stop()
    print((tmp_path / "chaos.log").read_text())
    print(
        f"chaos result: seed={seed} records={RECORDS} faults={sum(d.faults.values())} "
        f"{dict(d.faults)} group_restarts={d.group_restarts} "
        f"duration={time.monotonic() - began:.0f}s broker_peak_rss={gb(memory.peak if memory else None)} "
        f"records_deleted_by_driver={follower.records_deleted} "
        f"read: user_totals={len(got.user_totals.got)} region_totals={len(got.region_totals.got)} "
        f"greetings={len(got.greeted)} controls={len(got.controls.usable)} "
        + " ".join(
            f"{t}={sum(len(o) for o in f.offsets.values())} (+{f.copies} copies)"
            for t, f in got.inputs.items()
        )
    )
    assert sum(d.faults.values()) >= MIN_FAULTS
    want_users, want_regions = reference(out["events"])
    try:
        got.user_totals.check(want_users)
        got.region_totals.check(want_regions)
    except AssertionError:
        dump(kafka, p, tmp_path / "dump", out["events"], got)
        raise
    last = {}
    for c in got.controls.usable:
        assert c.watermark >= last.get(c.producer, MIN_WATERMARK), (
            f"{c.producer} watermark went backwards"
        )
        last[c.producer] = c.watermark
    # no record was late: none could be behind a watermark its reader was allowed to use
    for comp in COMPUTATIONS:
        behind = records_behind_a_usable_watermark(
            kafka.bootstrap, p, comp, controls=got.controls.usable, inputs=got.inputs
        )
        assert not behind, (
            f"{comp}: {len(behind)} records behind a usable watermark, e.g. {behind[:3]}"
        )
    # wall-time timers fired once each: one greeting per user
    assert sorted(got.greeted) == sorted({u for u, _, _ in out["events"]}), (
        "a wall-time timer fired twice or never"
    )


def dump(kafka, p, folder, events, got) -> None:
    """Everything needed to investigate a failed run, as JSON lines: the injected events,
    the outputs as the driver read them (it deleted them from the broker since), and every
    topic's records the broker still holds."""
    folder.mkdir(exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    for out in (got.user_totals, got.region_totals):
        with open(folder / f"{out.topic}.read.jsonl", "w") as f:
            for k, v in out.got.items():
                f.write(json.dumps({"window": k, "value": v}) + "\n")
            for k in out.twice:
                f.write(json.dumps({"emitted_again": k}) + "\n")
    for topic in p.topics():
        with open(folder / f"{topic}.jsonl", "w") as f:
            for r in read_committed(kafka.bootstrap, topic):
                f.write(
                    json.dumps(
                        {
                            "p": r.partition,
                            "o": r.offset,
                            "ts": r.timestamp,
                            "id": (r.id or b"").hex(),
                            "key": (r.key or b"").hex(),
                            "value": (r.value or b"").hex(),
                        }
                    )
                    + "\n"
                )


pytestmark = pytest.mark.timeout(3600 if LONG else 600)
