"""Edge cases around state, startup and bad records (issue: fault-injection suite)."""

import json
import re
import shutil
from collections import Counter

from confluent_kafka import Producer

from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from tests.helpers import (
    check_exact_counts,
    count_outputs,
    inject,
    make_events,
    setup_topics,
)
from tests.pipelines.counting import flaky_count, flaky_count_dlq, keyed_count

REF = "tests.pipelines.counting:keyed_count"


def test_deleted_state_dir_is_restored_from_the_changelog(kafka, name, workers, tmp_path):
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(3000, keys=40)
    inject(kafka.bootstrap, p, events[:2000])
    state = tmp_path / "state"
    w = workers(REF, name, slot="s0", state_dir=state)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= 2000, 60, "the first counts"
    )
    assert w.stop() == 0
    shutil.rmtree(state)  # the disk is gone while the worker is stopped
    inject(kafka.bootstrap, p, events[2000:])
    w = workers(REF, name, slot="s0", state_dir=state, tag="again")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))
    assert w.task_counters()["restored"] > 0


def test_a_worker_started_before_its_topics_waits_for_them(kafka, name, workers):
    w = workers(REF, name, slot="s0")
    wait_until(
        lambda: "waiting for topics" in w.log(), 30, "the worker to say it waits for its topics"
    )
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(300, keys=7)
    inject(kafka.bootstrap, p, events)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))


def _raw(kafka, topic, records):
    """Write records as a foreign producer would: whatever bytes, maybe no key."""
    prod = Producer({"bootstrap.servers": kafka.bootstrap})
    for key, value in records:
        prod.produce(topic, value, key)
    prod.flush(10)


def test_malformed_json_and_missing_keys_are_dead_lettered_with_where(kafka, name, workers):
    p = flaky_count_dlq(name)
    setup_topics(kafka.bootstrap, p)
    good = make_events(100, keys=5)
    inject(kafka.bootstrap, p, good[:50])
    _raw(
        kafka, f"{name}.events", [(b"u1", b"{not json"), (None, json.dumps({"user": "x"}).encode())]
    )
    inject(kafka.bootstrap, p, good[50:])
    w = workers("tests.pipelines.counting:flaky_count_dlq", name, slot="s0")
    wait_until(lambda: count_outputs(kafka.bootstrap, f"{name}.dead") >= 2, 60, "two dead letters")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(good), 60, "the good counts"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in good))
    errors = sorted(
        dict(r.headers)["kwheel.error"].decode()
        for r in read_committed(kafka.bootstrap, f"{name}.dead")
    )
    assert "malformed JSON" in errors[0] and f"{name}.events[" in errors[0]
    assert "record has no key" in errors[1]


def test_malformed_json_stops_the_task_under_the_default_policy(kafka, name, workers):
    p = flaky_count(name)
    setup_topics(kafka.bootstrap, p)
    _raw(kafka, f"{name}.events", [(b"u1", b"\xff\xfe not json")])
    w = workers("tests.pipelines.counting:flaky_count", name, slot="s0")
    assert w.wait(60) == 1
    [line] = [l for l in w.log().splitlines() if l.startswith("kwheel: error:")]
    assert "computation 'counter' failed on key 'u1'" in line and "malformed JSON" in line


def test_an_oversized_output_is_an_error_of_its_record(kafka, name, workers):
    p = flaky_count_dlq(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(60, keys=4)
    events[30] = (events[30][0], {**events[30][1], "bloat": True})
    inject(kafka.bootstrap, p, events)
    w = workers("tests.pipelines.counting:flaky_count_dlq", name, slot="s0")
    wait_until(lambda: count_outputs(kafka.bootstrap, f"{name}.dead") >= 1, 60, "the dead letter")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events) - 1,
        60,
        "the other counts",
    )
    assert w.stop() == 0
    check_exact_counts(
        kafka.bootstrap, f"{name}.counts", Counter(k for k, v in events if not v.get("bloat"))
    )
    [dead] = read_committed(kafka.bootstrap, f"{name}.dead")
    assert b"over the 1000000-byte limit" in dict(dead.headers)["kwheel.error"]


def _hoarding_events():
    """60 events; u1's state grows 300 kB with each of its records from the 5th on, so its
    third such record would make a changelog record over the limit."""
    events = make_events(60, keys=4)
    for i in range(17, 60, 4):
        events[i] = (events[i][0], {**events[i][1], "hoard": 300_000})
    assert events[17][0] == "u1"
    return events


def test_a_state_larger_than_a_changelog_record_stops_the_worker_naming_key_and_size(
    kafka, name, workers
):
    p = flaky_count(name)
    setup_topics(kafka.bootstrap, p)
    inject(kafka.bootstrap, p, _hoarding_events())
    w = workers("tests.pipelines.counting:flaky_count", name, slot="s0")
    assert w.wait(60) == 1
    [line] = [l for l in w.log().splitlines() if l.startswith("kwheel: error:")]
    assert "computation 'counter' failed on key 'u1'" in line and "StateTooLargeError" in line
    assert "over the 1000000-byte limit of a changelog record" in line
    assert "Traceback" not in w.log()


def test_a_state_larger_than_a_changelog_record_is_dead_lettered_and_the_rest_goes_on(
    kafka, name, workers
):
    p = flaky_count_dlq(name)
    setup_topics(kafka.bootstrap, p)
    events = _hoarding_events()
    inject(kafka.bootstrap, p, events)
    w = workers("tests.pipelines.counting:flaky_count_dlq", name, slot="s0")
    hoarders = [i for i, (k, v) in enumerate(events) if v.get("hoard")]
    too_big = hoarders[
        3:
    ]  # 4 x 300 kB > 1 MB: from the 4th on, each would overflow (its changes dropped)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.dead") >= len(too_big),
        60,
        "the dead letters",
    )
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events) - len(too_big),
        60,
        "the other counts",
    )
    assert w.stop() == 0
    check_exact_counts(
        kafka.bootstrap,
        f"{name}.counts",
        Counter(k for i, (k, v) in enumerate(events) if i not in too_big),
    )
    dead = read_committed(kafka.bootstrap, f"{name}.dead")
    assert len(dead) == len(too_big)
    assert all(b"StateTooLargeError" in dict(d.headers)["kwheel.error"] for d in dead)


def test_secrets_pass_through_to_kafka_and_stay_out_of_the_output(kafka):
    import os
    import subprocess
    import sys

    from kwheel.config import WorkerConfig
    from kwheel.kafka import clients
    from kwheel.testing.broker import free_port
    from tests.conftest import ROOT

    env = {
        "KWHEEL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KWHEEL_KAFKA_SASL_MECHANISM": "PLAIN",
        "KWHEEL_KAFKA_SASL_USERNAME": "kw",
        "KWHEEL_KAFKA_SASL_PASSWORD": "s3cr3t-pa55",
    }
    cfg = WorkerConfig.from_env(env, bootstrap_servers="127.0.0.1:1")
    for conf in (
        clients.transactional_producer_config(cfg, "t"),
        clients.producer_config(cfg),
        clients.group_consumer_config(cfg, "g", None),
        clients.reader_config(cfg),
        clients.base_config(cfg),
    ):
        assert (
            conf["security.protocol"] == "SASL_PLAINTEXT" and conf["sasl.password"] == "s3cr3t-pa55"
        )
    r = subprocess.run(
        [sys.executable, "-m", "kwheel", "worker", REF, "-b", f"127.0.0.1:{free_port()}"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "KWHEEL_STARTUP_TIMEOUT_S": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 1
    assert "s3cr3t-pa55" not in r.stdout + r.stderr


def test_committed_offset_below_the_log_start_warns_and_resumes(kafka, name, workers):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from tests.helpers import committed_total

    p = keyed_count(name, partitions=1)
    setup_topics(kafka.bootstrap, p)
    inject(kafka.bootstrap, p, make_events(100, keys=5))
    ref = "tests.pipelines.counting:keyed_count_one_partition"
    w = workers(ref, name, slot="s0")
    wait_until(
        lambda: committed_total(kafka.bootstrap, f"{name}.counter", f"{name}.events", 1) >= 100,
        60,
        "the first records committed",
    )
    assert w.stop() == 0
    inject(kafka.bootstrap, p, make_events(200, keys=5, seed_offset=100))
    # retention (here: delete_records) removes 150 records the computation never processed
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for f in admin.delete_records([TopicPartition(f"{name}.events", 0, 250)]).values():
        f.result()
    w = workers(ref, name, slot="s0", tag="after")
    wait_until(
        lambda: committed_total(kafka.bootstrap, f"{name}.counter", f"{name}.events", 1) >= 300,
        60,
        "the rest processed: no silent stall",
    )
    assert w.stop() == 0
    assert (
        "committed offset 100 of" in w.log()
        and "is below the log start 250: 150 records were deleted" in w.log()
    )
    assert w.task_counters()["processed"] == 50


def test_a_user_function_slower_than_the_transaction_timeout_is_aborted_and_retried(
    kafka, name, workers, tmp_path
):
    from tests.pipelines.counting import sluggish_count

    p = sluggish_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(400, keys=9)
    events[200] = (events[200][0], {**events[200][1], "slow": 4.5})  # the timeout is 3 s
    inject(kafka.bootstrap, p, events)
    mark = tmp_path / "slept"
    w = workers(
        "tests.pipelines.counting:sluggish_count",
        name,
        slot="s0",
        env={"KWHEEL_TRANSACTION_TIMEOUT_MS": "3000", "KWHEEL_TEST_SLOW_MARK": str(mark)},
    )
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 90, "all counts"
    )
    assert w.stop() == 0
    assert mark.exists(), "the slow call never happened"
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))
    # the slow task's batch, and any other task's batch left open while it slept
    lines = [l for l in w.log().splitlines() if "longer than transaction_timeout_ms=3000" in l]
    assert lines and all("counter[" in l and "aborting it and retrying" in l for l in lines)
    assert w.task_counters()["aborts"] >= 1


def test_batches_slower_than_the_transaction_timeout_are_replayed_smaller(kafka, name, workers):
    """Every record takes 10 ms and the timeout is 2 s: a batch of 500 outlasts it. The
    aborted batch is replayed in halves until it fits (then grows back), instead of being
    replayed whole and aborted forever. Exact counts."""
    from tests.pipelines.counting import sluggish_count

    p = sluggish_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(1200, keys=5)
    inject(kafka.bootstrap, p, events)
    w = workers(
        "tests.pipelines.counting:sluggish_count",
        name,
        slot="s0",
        args=["--batch-size", "500"],
        env={"KWHEEL_TRANSACTION_TIMEOUT_MS": "2000", "KWHEEL_TEST_SECONDS_PER_RECORD": "0.01"},
    )
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events),
        120,
        "all counts",
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))
    smaller = re.findall(r"in batches of at most (\d+) records", w.log())
    assert smaller and min(int(n) for n in smaller) < 250, w.tail()


def test_a_worker_started_while_the_broker_is_down_waits_for_it(kafka, name, workers):
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(300, keys=7)
    inject(kafka.bootstrap, p, events)
    kafka.pause()  # the broker stops answering (skips on brokers we cannot pause)
    try:
        w = workers(REF, name, slot="s0", env={"KWHEEL_STARTUP_TIMEOUT_S": "120"})
        wait_until(
            lambda: "waiting for Kafka at" in w.log(), 60, "the worker to say it waits for Kafka"
        )
        assert w.alive()
    finally:
        kafka.resume()
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 90, "all counts"
    )
    assert w.stop() == 0
    assert "Kafka at" in w.log() and "answers now" in w.log()
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))


def test_a_kill_and_a_rebalance_in_the_middle_of_a_restore(kafka, name, workers, tmp_path):
    """A fresh store restoring a large changelog is SIGKILLed mid-restore and restarted (a
    finished partition is not restored again), and a second worker joins while it restores:
    no crash loop, no hang, exact counts."""
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(80_000, keys=40_000)
    inject(kafka.bootstrap, p, events)
    w = workers(REF, name, slot="s0", state_dir=tmp_path / "first")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events),
        120,
        "the first counts",
    )
    assert w.stop() == 0
    # s0 comes back on a new, empty disk: it must restore every partition's changelog
    fresh = tmp_path / "fresh"
    w = workers(REF, name, slot="s0", state_dir=fresh, tag="restoring")
    wait_until(
        lambda: w.log().count("restoring ") >= 2 or not w.alive(), 60, "the restore to get going"
    )
    w.kill()
    assert w.log().count("changelog records in") < 2, (
        "the kill came after the second restore finished"
    )
    w = workers(REF, name, slot="s0", state_dir=fresh, tag="resumed")
    wait_until(lambda: "restoring " in w.log() or not w.alive(), 60, "the restore to resume")
    other = workers(REF, name, slot="s1", state_dir=tmp_path / "other")  # a rebalance mid-restore
    more = make_events(4000, keys=40_000, seed_offset=len(events))
    inject(kafka.bootstrap, p, more)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events) + len(more),
        120,
        "the counts after the restore",
    )
    assert w.stop() == 0 and other.stop() == 0
    first = w.log().split("restoring ")[
        1
    ]  # the restarted worker does not restore partition 0 again
    assert "resuming after" in first or ".changelog[0]" not in first, first
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events + more))
