"""Test helpers: inject records, read committed outputs, compute references."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

from kwheel.config import WorkerConfig
from kwheel.kafka.clients import wait_for_broker
from kwheel.kafka.topics import create_topics
from kwheel.kafka.writer import StreamProducer
from kwheel.pipeline import Pipeline
from kwheel.testing.readers import (
    committed_total,  # noqa: F401 (the tests import it from here)
    read_committed,
)
from kwheel.watermarks import MIN_WATERMARK


def setup_topics(bootstrap: str, pipeline: Pipeline) -> None:
    create_topics(wait_for_broker(WorkerConfig(bootstrap_servers=bootstrap)), pipeline)


def make_events(n: int, keys: int, seed_offset: int = 0, **extra) -> list[tuple[str, dict]]:
    """``n`` events over ``keys`` users (user u{i % keys}), each with a sequence number."""
    return [
        (f"u{i % keys}", {"user": f"u{i % keys}", "seq": i + seed_offset, **extra})
        for i in range(n)
    ]


def inject(
    bootstrap: str,
    pipeline: Pipeline,
    events: list[tuple[str, dict]],
    stream: str = "events",
    ids: list[bytes] | None = None,
) -> list[bytes]:
    """Send events with current timestamps; return their record ids."""
    now = int(time.time() * 1000)
    out = []
    with StreamProducer(pipeline, WorkerConfig(bootstrap_servers=bootstrap)) as sp:
        for i, (key, value) in enumerate(events):
            out.append(sp.send(stream, key, value, timestamp=now + i, id=ids[i] if ids else None))
    return out


def read_json(bootstrap: str, topic: str) -> list[dict]:
    return [json.loads(r.value) for r in read_committed(bootstrap, topic)]


def count_outputs(bootstrap: str, topic: str) -> int:
    return len(read_committed(bootstrap, topic))


def check_exact_counts(
    bootstrap: str, topic: str, expected: Counter, key_field: str = "key"
) -> list:
    """Each key's outputs are exactly 1..n, once each, with n its reference count; ids unique."""
    records = read_committed(bootstrap, topic)
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} output record ids appear twice"
    seen: dict[str, list[int]] = defaultdict(list)
    for r in records:
        v = json.loads(r.value)
        seen[v[key_field]].append(v["count"])
    assert set(seen) == set(expected), (
        f"keys differ: extra {set(seen) - set(expected)}, missing {set(expected) - set(seen)}"
    )
    for k, n in expected.items():
        assert sorted(seen[k]) == list(range(1, n + 1)), (
            f"key {k}: counts {sorted(seen[k])[:10]}... expected 1..{n}"
        )
    return records


def changelog_state(bootstrap: str, topic: str) -> dict:
    """The latest per-key state in a computation's changelog (what a restore would build)."""
    from kwheel.state import layout

    state: dict = {}
    for r in read_committed(bootstrap, topic):
        if r.key[:1] != layout.STATE:
            continue
        k = layout.key_from_tag(r.key[1:])
        if r.value is None:
            state.pop(k, None)
        else:
            state[k] = layout.decode_state(r.value)
    return state


def read_controls(bootstrap: str, pipeline_name: str):
    """The watermark control records of a pipeline that readers use, in publication order:
    without those a zombie wrote after its task's next owner announced itself."""
    from kwheel.watermarks.control import Control

    return usable_controls(
        Control.decode(r.value) for r in read_committed(bootstrap, f"{pipeline_name}.watermarks")
    )


def usable_controls(controls):
    """Of ``controls`` (the watermark topic's, in topic order), those readers keep."""
    from kwheel.watermarks.upstream import WatermarkTable

    table = WatermarkTable()
    return [c for c in controls if table.add(c)]


def latest_watermark(bootstrap: str, pipeline_name: str, prefix: str) -> int:
    """min over producers whose id starts with ``prefix`` of their latest watermark."""
    return latest_watermark_of(read_controls(bootstrap, pipeline_name), prefix)


def latest_watermark_of(controls, prefix: str) -> int:
    """``latest_watermark`` of usable controls already read."""
    latest: dict[str, int] = {}
    for c in controls:
        if c.producer.startswith(prefix):
            latest[c.producer] = c.watermark
    return min(latest.values()) if latest else MIN_WATERMARK


class FirstCopies:
    """A topic's committed records as ``records_behind_a_usable_watermark`` needs them,
    kept as they are read (a ``TopicFollower`` handler): per partition, the offset and
    timestamp of the first copy of each record id, in offset order. A later copy of an id
    is dropped by id by its reader, never processed, so it cannot be late."""

    def __init__(self) -> None:
        from array import array

        self._array = array
        self.offsets: dict[int, array] = {}
        self.timestamps: dict[int, array] = {}
        self.seen: dict[int, set[bytes]] = defaultdict(set)
        self.copies = 0

    def __call__(self, r) -> None:
        if r.id is not None:
            if r.id in self.seen[r.partition]:
                self.copies += 1
                return
            self.seen[r.partition].add(r.id)
        if r.partition not in self.offsets:
            self.offsets[r.partition] = self._array("q")
            self.timestamps[r.partition] = self._array("q")
        self.offsets[r.partition].append(r.offset)
        self.timestamps[r.partition].append(r.timestamp)

    def records(self, partition: int):
        """(offset, timestamp) of the first copies on ``partition``, in offset order."""
        return zip(self.offsets.get(partition, ()), self.timestamps.get(partition, ()))


def first_copies(records, partition: int):
    """(offset, timestamp) of the first copy of each id among ``records`` on ``partition``."""
    keep = FirstCopies()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.partition == partition:
            keep(r)
    return keep.records(partition)


def records_behind_a_usable_watermark(
    bootstrap: str, pipeline: Pipeline, computation: str, controls=None, inputs=None
) -> list[str]:
    """Committed input records of ``computation`` that a reader could have found behind the
    watermark it was allowed to use: each would have reached it late.

    Offline and for every reader speed at once: a task of ``computation`` that has consumed
    input partition (t, p) up to offset y may use, at most, U(y) = min over the producers
    feeding it of the highest watermark among their controls (as readers keep them) whose
    position on (t, p) is <= y. A record at offset y with a timestamp below U(y) breaks the
    invariant of docs/guarantees.md. Injectors are assumed to send nothing late (copies of
    records already sent are dropped by id before lateness matters).

    ``controls`` (the usable ones, as ``read_controls`` returns them) and ``inputs`` (input
    topic -> ``FirstCopies`` of its records, kept as they were committed) come from a
    reader that followed the run; by default both are read from the broker now."""
    import bisect

    from kwheel.watermarks import MAX_WATERMARK as END
    from kwheel.watermarks.control import INJECTOR
    from kwheel.watermarks.upstream import Upstream

    if controls is None:
        controls = read_controls(bootstrap, pipeline.name)
    bad = []
    for p in range(pipeline.computations[computation].partitions):
        up = Upstream(pipeline, computation, p)
        producers = {pid for f in up.feeds for pid in f.tasks}
        injected = {f.stream for f in up.feeds if f.injected}
        producers |= {
            c.producer for c in controls if c.kind == INJECTOR and injected & set(c.streams)
        }
        for topic in up.input_topics:
            # per producer: (needed offset on (topic, p), best watermark from there on), ascending
            steps: dict[str, list[tuple[int, int]]] = {pid: [] for pid in producers}
            for c in controls:
                if c.producer in steps:
                    need = next((o for t, q, o in c.positions if (t, q) == (topic, p)), 0)
                    steps[c.producer].append((need, END if c.final else c.watermark))
            for pid, s in steps.items():
                s.sort()
                best, merged = MIN_WATERMARK, []
                for need, w in s:
                    best = max(best, w)
                    merged.append((need, best))
                steps[pid] = merged
            # a copy of a record already read is dropped by id, never processed
            records = (
                inputs[topic].records(p)
                if inputs is not None
                else first_copies(read_committed(bootstrap, topic), p)
            )
            for offset, timestamp in records:
                usable = (
                    min(
                        (
                            s[i][1]
                            if (i := bisect.bisect_right(s, (offset, END)) - 1) >= 0
                            else MIN_WATERMARK
                        )
                        for s in steps.values()
                    )
                    if steps
                    else MIN_WATERMARK
                )
                if timestamp < usable:
                    bad.append(
                        f"{topic}[{p}]@{offset} at {timestamp} is behind the usable watermark {usable}"
                    )
    return bad


def run_kwheel(*args: str, env: dict | None = None, timeout: float = 120, stdin: str | None = None):
    """``python -m kwheel ARGS`` in a subprocess, from the repository root; its result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", "kwheel", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(root), **(env or {})),
        timeout=timeout,
        cwd=root,
        input=stdin if stdin is not None else "",
    )


def error_line(result) -> str:
    """The one ``kwheel: error:`` line a failed command printed."""
    lines = [x for x in result.stderr.splitlines() if x.startswith("kwheel: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]
