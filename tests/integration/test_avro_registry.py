"""Avro through a schema registry, end to end: a Confluent producer writes with schema v1
(and v2), the worker reads with reader schema v2; bad data goes through the error policy.

The registry is kwheel.testing.registry's test server (no real one runs here); the
producer is confluent-kafka's own AvroSerializer, so the worker reads the real wire format.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from kwheel.serde import AvroSerde
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from tests.helpers import check_exact_counts, count_outputs, setup_topics
from tests.pipelines.avro import SCHEMAS, avro_dlq, avro_evolve, avro_strict

AUTH = "kwheel:r3g-s3cret"


@pytest.fixture
def sr(schema_registry, registry_env):
    return SchemaRegistryClient({"url": schema_registry.url, "basic.auth.user.info": AUTH})


def serializer(sr, version: str) -> AvroSerializer:
    return AvroSerializer(sr, (SCHEMAS / f"event_{version}.avsc").read_text())


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """Send raw (key, value) records as an outside producer would; return (partition, offset) of each."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
        }
    )
    where: list[tuple[int, int] | None] = [None] * len(records)

    def delivered(i):
        def cb(err, msg):
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())

        return cb

    for i, (k, v) in enumerate(records):
        p.produce(topic, v, k.encode(), on_delivery=delivered(i))
        p.poll(0)
    assert p.flush(30) == 0
    return where  # type: ignore[return-value]


def good_events(sr, topic: str, n: int, keys: int) -> list[tuple[str, bytes, dict]]:
    """Even seqs written with schema v1 (no tier), odd ones with v2 (tier "gold")."""
    v1, v2 = serializer(sr, "v1"), serializer(sr, "v2")
    ctx = SerializationContext(topic, MessageField.VALUE)
    out = []
    for i in range(n):
        k = f"user-{i % keys}"  # spread over both partitions (murmur2)
        if i % 2 == 0:
            out.append((k, v1({"user": k, "seq": i}, ctx), {"seq": i, "tier": "free"}))
        else:
            out.append(
                (k, v2({"user": k, "seq": i, "tier": "gold"}, ctx), {"seq": i, "tier": "gold"})
            )
    return out


def test_v1_and_v2_writers_are_read_with_the_v2_reader_exactly(
    kafka, name, workers, sr, registry_env, schema_registry
):
    p = avro_evolve(name)
    setup_topics(kafka.bootstrap, p)
    events = good_events(sr, f"{name}.events", 300, keys=7)
    produce(kafka.bootstrap, f"{name}.events", [(k, v) for k, v, _ in events])
    w = workers("tests.pipelines.avro:avro_evolve", name, slot="s0", env=registry_env)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    # the worker registered its output schema under <topic>-value, and wrote the wire format
    assert f"{name}.counts-value" in sr.get_subjects()
    out = read_committed(kafka.bootstrap, f"{name}.counts")
    assert all(r.value[:1] == b"\x00" for r in out)
    de = AvroDeserializer(sr)
    ctx = SerializationContext(f"{name}.counts", MessageField.VALUE)
    values = [de(r.value, ctx) for r in out]
    assert sorted((v["seq"], v["tier"]) for v in values) == sorted(
        (e["seq"], e["tier"]) for _, _, e in events
    )
    per_key: dict[str, list[int]] = {}
    for v in values:
        per_key.setdefault(v["key"], []).append(v["count"])
    for k, n in Counter(k for k, _, _ in events).items():
        assert sorted(per_key[k]) == list(range(1, n + 1)), k
    assert "r3g-s3cret" not in w.log()


def bad_values(sr, topic: str) -> dict[str, tuple[bytes, str]]:
    """Values that do not match the stream's schema, with what the error must say."""
    bad_id = sr.register_schema(
        f"{topic}-value", Schema((SCHEMAS / "event_bad.avsc").read_text(), "AVRO")
    )
    body = AvroSerde(SCHEMAS / "event_bad.avsc").encode({"user": "u1", "seq": "one"})
    return {
        "json": (
            json.dumps({"user": "u1", "seq": 1}).encode(),
            "not Confluent Avro wire format: first byte is 0x7b, expected the magic byte 0x00",
        ),
        "unknown-id": (
            b"\x00" + (987654).to_bytes(4, "big") + body,
            "schema id 987654 is not in the schema registry",
        ),
        "incompatible": (
            b"\x00" + bad_id.to_bytes(4, "big") + body,
            f"Avro written with schema id {bad_id} cannot be read as event_v2.avsc",
        ),
    }


def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        [tp] = c.committed([TopicPartition(topic, partition)], timeout=10)
        return tp.offset
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["json", "unknown-id", "incompatible"])
def test_bad_avro_stops_the_worker_naming_the_record_and_commits_nothing_past_it(
    kafka, name, workers, sr, registry_env, kind
):
    p = avro_strict(name)
    setup_topics(kafka.bootstrap, p)
    topic = f"{name}.events"
    events = good_events(sr, topic, 200, keys=5)
    value, what = bad_values(sr, topic)[kind]
    key = events[120][0]
    records = [(k, v) for k, v, _ in events]
    records.insert(120, (key, value))
    where = produce(kafka.bootstrap, topic, records)
    part, offset = where[120]
    w = workers("tests.pipelines.avro:avro_strict", name, slot="s0", env=registry_env)
    assert w.wait(60) == 1
    errors = [line for line in w.log().splitlines() if line.startswith("kwheel: error:")]
    assert len(errors) == 1, w.log()
    assert (
        f"computation 'counter' failed on key '{key}' at {topic}[{part}]@{offset}: SerdeError: {what}"
        in errors[0]
    )
    assert "r3g-s3cret" not in w.log()
    # nothing at or after the bad record was committed, in offsets or in outputs
    assert committed_offset(kafka.bootstrap, f"{name}.counter", topic, part) <= offset
    after = {
        events[i if i < 120 else i - 1][2]["seq"]
        for i, (pp, o) in enumerate(where)
        if i != 120 and pp == part and o > offset
    }
    assert after, "the test needs good records after the bad one in its partition"
    out = [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.counts")]
    assert not after & {v["seq"] for v in out}


def test_bad_avro_goes_to_the_dead_letter_stream_and_the_rest_is_exact(
    kafka, name, workers, sr, registry_env
):
    p = avro_dlq(name)
    setup_topics(kafka.bootstrap, p)
    topic = f"{name}.events"
    events = good_events(sr, topic, 300, keys=7)
    bad = bad_values(sr, topic)
    records = [(k, v) for k, v, _ in events]
    for i, (value, _) in zip((50, 150, 250), bad.values()):
        records.insert(i, ("user-1", value))
    where = produce(kafka.bootstrap, topic, records)
    w = workers("tests.pipelines.avro:avro_dlq", name, slot="s0", env=registry_env)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events),
        60,
        "all good counts",
    )
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.dead") >= len(bad), 30, "the dead letters"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _, _ in events))
    dead = read_committed(kafka.bootstrap, f"{name}.dead")
    assert sorted(d.value for d in dead) == sorted(v for v, _ in bad.values())
    for (value, what), i in zip(bad.values(), (50, 150, 250)):
        [d] = [d for d in dead if d.value == value]
        headers = dict(d.headers)
        part, offset = where[i]
        assert headers["kwheel.source"] == f"{topic}[{part}]@{offset}".encode()
        assert f"SerdeError: {what}".encode() in headers["kwheel.error"]


def test_an_unreachable_registry_stops_the_worker_instead_of_dead_lettering(
    kafka, name, workers, sr, registry_env
):
    from kwheel.testing.broker import free_port

    p = avro_dlq(name)
    setup_topics(kafka.bootstrap, p)
    topic = f"{name}.events"
    events = good_events(sr, topic, 20, keys=3)
    produce(kafka.bootstrap, topic, [(k, v) for k, v, _ in events])
    dead_url = f"http://127.0.0.1:{free_port()}"
    w = workers(
        "tests.pipelines.avro:avro_dlq",
        name,
        slot="s0",
        env={**registry_env, "KWHEEL_SCHEMA_REGISTRY_URL": dead_url},
    )
    assert w.wait(90) == 1
    errors = [line for line in w.log().splitlines() if line.startswith("kwheel: error:")]
    assert len(errors) == 1, w.log()
    assert (
        f"schema registry {dead_url}: fetching schema id" in errors[0]
        and "ConnectError" in errors[0]
    )
    assert count_outputs(kafka.bootstrap, f"{name}.dead") == 0
    assert committed_offset(kafka.bootstrap, f"{name}.counter", topic, 0) < 0  # nothing committed
    assert committed_offset(kafka.bootstrap, f"{name}.counter", topic, 1) < 0
