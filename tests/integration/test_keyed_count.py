"""End-to-end behaviour of one computation on a real broker: counts, dedup, repartition."""

from collections import Counter

from kwheel.testing.processes import wait_until
from tests.helpers import (
    check_exact_counts,
    count_outputs,
    inject,
    make_events,
    setup_topics,
)
from tests.pipelines.counting import keyed_count, rekeyed_count


def test_two_stage_keyed_count_is_exact(kafka, name, workers):
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(3000, keys=37)
    inject(kafka.bootstrap, p, events)
    w = workers("tests.pipelines.counting:keyed_count", name, slot="s0")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))
    stats = w.task_counters()
    assert stats["processed"] == len(events)
    assert stats["duplicates"] == 0


def test_duplicate_record_ids_are_dropped_and_counted(kafka, name, workers):
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(1000, keys=10)
    ids = inject(kafka.bootstrap, p, events)
    # an at-least-once injector re-sends a slice of its records with the same ids
    inject(kafka.bootstrap, p, events[200:500], ids=ids[200:500])
    w = workers("tests.pipelines.counting:keyed_count", name, slot="s0")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    # and again once the originals are committed: dedup must hold across batches (RocksDB)
    inject(kafka.bootstrap, p, events[:100], ids=ids[:100])
    inject(
        kafka.bootstrap, p, [("u1", {"user": "u1", "seq": -1})]
    )  # a marker: processed after the re-sends
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events) + 1,
        60,
        "the marker",
    )
    assert w.stop() == 0
    expected = Counter(k for k, _ in events)
    expected["u1"] += 1
    check_exact_counts(kafka.bootstrap, f"{name}.counts", expected)
    stats = w.task_counters()
    assert stats["duplicates"] == 400
    assert stats["processed"] == len(events) + 1


def test_key_extractor_routes_through_a_repartition_topic(kafka, name, workers):
    p = rekeyed_count(name)
    setup_topics(kafka.bootstrap, p)
    countries = ["de", "fr", "jp", "br", "us", "ke", "in"]
    events = [
        (
            f"u{i % 53}",
            {"user": f"u{i % 53}", "country": countries[(i * 7) % len(countries)], "seq": i},
        )
        for i in range(2000)
    ]
    inject(kafka.bootstrap, p, events)
    # kept, to be counted below: consumed repartition records are deleted otherwise
    keep = {"KWHEEL_REPARTITION_PURGE_INTERVAL_MS": "0"}
    w = workers("tests.pipelines.counting:rekeyed_count", name, slot="s0", env=keep)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(v["country"] for _, v in events))
    # the re-keyed records really went through the repartition topic, keyed by country
    assert count_outputs(kafka.bootstrap, f"{name}.counter.events.repartition") == len(events)


def test_records_an_outside_producer_writes_to_a_re_keyed_stream_are_counted(kafka, name, workers):
    # they reached a re-keyed input only through the repartition topic that kwheel's own
    # producers wrote, so a plain Kafka producer's records never arrived
    import json

    from confluent_kafka import Producer

    p = rekeyed_count(name)
    setup_topics(kafka.bootstrap, p)
    countries = ["de", "fr", "jp"]
    outside = [{"user": f"u{i % 17}", "country": countries[i % 3], "seq": i} for i in range(300)]
    prod = Producer({"bootstrap.servers": kafka.bootstrap})
    for v in outside:
        prod.produce(f"{name}.events", json.dumps(v).encode(), v["user"].encode())
    prod.flush(10)
    ours = [(f"u{i}", {"user": f"u{i}", "country": "ke", "seq": 1000 + i}) for i in range(50)]
    inject(kafka.bootstrap, p, ours)
    w = workers("tests.pipelines.counting:rekeyed_count", name, slot="s0")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(outside) + len(ours),
        60,
        "all counts",
    )
    assert w.stop() == 0
    check_exact_counts(
        kafka.bootstrap,
        f"{name}.counts",
        Counter(v["country"] for v in outside + [v for _, v in ours]),
    )


def test_a_key_read_directly_and_re_keyed_has_one_count(kafka, name, workers):
    from tests.pipelines.counting import mixed_count

    p = mixed_count(name)
    setup_topics(kafka.bootstrap, p)
    direct = make_events(200, keys=11)
    rekeyed = [
        (f"other{i}", v) for i, (_, v) in enumerate(make_events(200, keys=11, seed_offset=200))
    ]
    inject(kafka.bootstrap, p, direct, stream="a")
    inject(kafka.bootstrap, p, rekeyed, stream="b")
    w = workers("tests.pipelines.counting:mixed_count", name, slot="s0")
    wait_until(lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= 400, 60, "all counts")
    assert w.stop() == 0
    check_exact_counts(
        kafka.bootstrap, f"{name}.counts", Counter(v["user"] for _, v in direct + rekeyed)
    )
