"""Avro serdes: reader-schema evolution, the Confluent wire format through a registry, and
the errors bad data gives (what is wrong, which schema id).

The registry is kwheel.testing.registry's test server over loopback HTTP; confluent-kafka's
own AvroSerializer/AvroDeserializer check that our framing is the Confluent one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from kwheel import Pipeline
from kwheel.config import WorkerConfig
from kwheel.errors import ConfigError, PipelineError, RegistryError, SerdeError
from kwheel.registry import SchemaRegistry, bind, redact
from kwheel.runtime.worker import Worker
from kwheel.serde import AvroSerde, resolve
from kwheel.testing.broker import free_port
from kwheel.testing.registry import TestRegistry

SCHEMAS = Path(__file__).resolve().parents[1] / "pipelines" / "schemas"
V1, V2, BAD = SCHEMAS / "event_v1.avsc", SCHEMAS / "event_v2.avsc", SCHEMAS / "event_bad.avsc"
AUTH = "kwheel:r3g-s3cret"


def schema_text(path: Path) -> str:
    return path.read_text()


@pytest.fixture
def confluent(schema_registry, registry_env):
    """confluent-kafka's own client on the test registry."""
    return SchemaRegistryClient({"url": schema_registry.url, "basic.auth.user.info": AUTH})


@pytest.fixture
def configured(schema_registry) -> SchemaRegistry:
    """The test registry, as a worker configured with ``registry_env`` hands it to serdes."""
    return SchemaRegistry(schema_registry.url, AUTH)


def produce_v1(client, topic: str, value: dict) -> bytes:
    """What a Confluent producer with writer schema v1 puts on ``topic``."""
    ser = AvroSerializer(client, schema_text(V1))
    return ser(value, SerializationContext(topic, MessageField.VALUE))


def bound(path_or_dict, topic: str, configured: SchemaRegistry | None = None, **kw) -> AvroSerde:
    """A registry=True serde on ``topic``, run with the ``configured`` registry (if any)."""
    s = AvroSerde(path_or_dict, registry=True, **kw).for_topic(topic, "value")
    return s if configured is None else s.with_registry(configured)


# ---- plain Avro with a reader schema ------------------------------------------------------------


def test_plain_reader_schema_fills_an_added_field_with_its_default():
    old, new = AvroSerde(V1), AvroSerde(V1, reader_schema=V2)
    assert new.decode(old.encode({"user": "u1", "seq": 7})) == {
        "user": "u1",
        "seq": 7,
        "tier": "free",
    }


def test_plain_reader_schema_drops_a_removed_field():
    writer, reader = AvroSerde(V2), AvroSerde(V2, reader_schema=V1)
    assert reader.decode(writer.encode({"user": "u1", "seq": 7, "tier": "gold"})) == {
        "user": "u1",
        "seq": 7,
    }


def test_plain_schema_as_dict_is_named_after_the_record():
    s = AvroSerde(json.loads(schema_text(V1)))
    assert s.name == "avro:Event" and s.path is None
    assert s.decode(s.encode({"user": "a", "seq": 1})) == {"user": "a", "seq": 1}


def test_plain_unresolvable_reader_schema_says_which_schemas():
    reader = AvroSerde(BAD, reader_schema=V1)
    data = reader.encode({"user": "a", "seq": "one"})
    with pytest.raises(
        SerdeError,
        match=r"Avro written with schema event_bad\.avsc cannot be read as event_v1\.avsc",
    ):
        reader.decode(data)


def test_plain_trailing_bytes_are_malformed():
    s = AvroSerde(V1)
    with pytest.raises(
        SerdeError, match=r"malformed Avro for schema event_v1\.avsc: 3 bytes left over"
    ):
        s.decode(s.encode({"user": "a", "seq": 1}) + b"xyz")


def test_plain_json_bytes_are_malformed():
    with pytest.raises(SerdeError, match=r"malformed Avro for schema event_v1\.avsc"):
        AvroSerde(V1).decode(b'{"user": "u1", "seq": 1}')


def test_invalid_reader_schema_is_named():
    with pytest.raises(SerdeError, match=r"invalid Avro schema Nope"):
        AvroSerde(
            V1,
            reader_schema={
                "type": "record",
                "name": "Nope",
                "fields": [{"name": "x", "type": "nosuch"}],
            },
        )


# ---- names, subjects, configuration ----------------------------------------------------------------


def test_resolve_avro_registry_name():
    s = resolve(f"avro+registry:{V2}")
    assert (
        isinstance(s, AvroSerde) and s.registry is True and s.name == "avro+registry:event_v2.avsc"
    )


@pytest.mark.parametrize("bad", ["", "sr.example:8081", 1])
def test_registry_must_be_true_or_a_url(bad):
    with pytest.raises(SerdeError, match=r"registry must be True or an http\(s\):// URL, got "):
        AvroSerde(V1, registry=bad)


def test_stream_binds_subjects_after_its_topic():
    shared = AvroSerde(V1, registry=True)
    p = Pipeline("p")
    a = p.stream("a", value=shared, key=AvroSerde({"type": "string"}, registry=True))
    b = p.stream("b", value=shared, topic="custom.topic")
    assert a.value_serde.subject == "p.a-value" and a.key_serde.subject == "p.a-key"
    assert b.value_serde.subject == "custom.topic-value"
    assert shared.subject is None  # the declared object stays unbound: each stream has its copy
    plain = p.stream("c", value=f"avro:{V1}")
    assert plain.value_serde.subject is None


def test_stream_with_missing_registry_schema_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match=r"stream 's': Avro schema file not found"):
        Pipeline("p").stream("s", value=f"avro+registry:{tmp_path / 'nope.avsc'}")


def test_config_reads_registry_settings_and_hides_the_password():
    cfg = WorkerConfig.from_env(
        {
            "KWHEEL_SCHEMA_REGISTRY_URL": "https://sr.example:8081",
            "KWHEEL_SCHEMA_REGISTRY_AUTH": "user:pa55w0rd",
        }
    )
    assert (
        cfg.schema_registry_url == "https://sr.example:8081"
        and cfg.schema_registry_auth == "user:pa55w0rd"
    )
    assert "pa55w0rd" not in repr(cfg)


def test_config_rejects_a_bad_registry_url_without_showing_credentials():
    with pytest.raises(
        ConfigError, match=r"schema_registry_url: expected http\(s\)://host:port"
    ) as e:
        WorkerConfig(schema_registry_url="sr.example:8081")
    with pytest.raises(ConfigError) as e:
        WorkerConfig(schema_registry_url="ftp://u:pa55w0rd@sr.example")
    assert "pa55w0rd" not in str(e.value)
    with pytest.raises(
        ConfigError, match=r"schema_registry_auth: expected user:password \(value not shown\)"
    ) as e:
        WorkerConfig(schema_registry_auth="pa55w0rd")
    assert "pa55w0rd" not in str(e.value)


def test_redact_removes_user_info():
    assert redact("https://u:pw@a:1/x,http://b:2") == "https://a:1/x,http://b:2"


def test_registry_serde_without_any_registry_says_what_to_set():
    with pytest.raises(
        RegistryError, match=r"needs a schema registry: set KWHEEL_SCHEMA_REGISTRY_URL"
    ):
        bound(V1, "t").encode({"user": "a", "seq": 1})


def test_registry_serde_outside_a_stream_needs_a_subject(configured):
    with pytest.raises(SerdeError, match=r"has a registry but no subject"):
        AvroSerde(V1, registry=True).with_registry(configured).encode({"user": "a", "seq": 1})


# ---- the configured registry, handed to what runs a pipeline ------------------------------------

EVENT = {"user": "a", "seq": 1}


def test_a_config_hands_its_registry_to_a_copy_of_the_pipeline(schema_registry, confluent):
    p = Pipeline("handed")
    shared = AvroSerde(V1, registry=True)
    p.stream("a", value=shared)
    p.stream("b", value=shared)
    p.stream("same", value=AvroSerde(V1, registry=schema_registry.url))  # the configured URL
    p.stream("plain", value=f"avro:{V1}")
    cfg = WorkerConfig(schema_registry_url=schema_registry.url, schema_registry_auth=AUTH)
    run = bind(p, SchemaRegistry.from_config(cfg))
    assert run is not p and run.streams["plain"] is p.streams["plain"]
    run.streams["a"].value_serde.encode(EVENT)
    run.streams["b"].value_serde.encode(EVENT)
    run.streams["same"].value_serde.encode(EVENT)  # with the configured credentials
    assert {"handed.a-value", "handed.b-value", "handed.same-value"} <= set(
        confluent.get_subjects()
    )
    with pytest.raises(RegistryError, match=r"needs a schema registry"):
        p.streams["a"].value_serde.encode(EVENT)  # the declared pipeline is left as it was


def test_a_pipeline_without_registry_serdes_or_a_config_without_a_registry_is_left_alone():
    p = Pipeline("alone")
    p.stream("a", value=f"avro:{V1}")
    assert bind(p, SchemaRegistry("http://sr.example:8081")) is p
    p.stream("b", value=f"avro+registry:{V1}")
    assert bind(p, SchemaRegistry.from_config(WorkerConfig())) is p


def test_a_worker_runs_the_pipeline_with_its_configured_registry(schema_registry, confluent):
    p = Pipeline("worker-handed")
    p.stream("events", value=AvroSerde(V1, registry=True), source=True)
    p.stream("out")
    p.computation("c", lambda: None, inputs=["events"], outputs=["out"])
    cfg = WorkerConfig(schema_registry_url=schema_registry.url, schema_registry_auth=AUTH)
    Worker(p.validate(), cfg).pipeline.streams["events"].value_serde.encode(EVENT)
    assert "worker-handed.events-value" in confluent.get_subjects()


# ---- the wire format ---------------------------------------------------------------------------------


def test_encode_registers_under_topic_value_and_frames_with_the_id(
    schema_registry, confluent, configured
):
    s = bound(V1, "wire.enc", configured)
    data = s.encode({"user": "u1", "seq": 3})
    sid = confluent.get_latest_version("wire.enc-value").schema_id
    assert data[:1] == b"\x00" and int.from_bytes(data[1:5], "big") == sid
    assert data[5:] == AvroSerde(V1).encode({"user": "u1", "seq": 3})  # the body is plain Avro
    before = len(schema_registry.requests)
    for i in range(20):
        s.encode({"user": "u1", "seq": i})
    assert len(schema_registry.requests) == before  # the id is registered once, then reused


def test_confluent_deserializer_reads_what_we_write(confluent, configured):
    data = bound(V2, "wire.interop", configured).encode({"user": "u1", "seq": 3, "tier": "gold"})
    de = AvroDeserializer(confluent, schema_text(V1))  # an older reader: drops tier
    assert de(data, SerializationContext("wire.interop", MessageField.VALUE)) == {
        "user": "u1",
        "seq": 3,
    }


def test_decode_resolves_a_v1_writer_to_the_v2_reader_and_caches_the_writer(
    schema_registry, confluent, configured
):
    data = produce_v1(confluent, "wire.evolve", {"user": "u1", "seq": 5})
    s = bound(V2, "wire.evolve", configured)
    assert s.decode(data) == {"user": "u1", "seq": 5, "tier": "free"}
    before = len(schema_registry.requests)
    assert s.decode(produce_v1(confluent, "wire.evolve", {"user": "u2", "seq": 6}))["user"] == "u2"
    assert not [r for r in schema_registry.requests[before:] if r[1].startswith("/schemas/ids/")]


def test_decode_reads_its_own_and_newer_writers(confluent, configured):
    v1, v2 = bound(V1, "wire.mixed", configured), bound(V2, "wire.mixed", configured)
    new = v2.encode({"user": "u1", "seq": 1, "tier": "gold"})
    assert v1.decode(new) == {"user": "u1", "seq": 1}  # removed field (for the v1 reader)
    assert v2.decode(new) == {"user": "u1", "seq": 1, "tier": "gold"}
    assert v2.decode(v1.encode({"user": "u2", "seq": 2})) == {
        "user": "u2",
        "seq": 2,
        "tier": "free",
    }


def test_wrong_magic_byte(configured):
    with pytest.raises(
        SerdeError,
        match=r"not Confluent Avro wire format: first byte is 0x7b, expected the magic byte 0x00",
    ):
        bound(V2, "t", configured).decode(b'{"user": "u1", "seq": 1}')


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x01", None])
def test_shorter_than_the_header(configured, data):
    with pytest.raises(
        SerdeError,
        match=r"not Confluent Avro wire format: \d bytes, shorter than the 5-byte header",
    ):
        bound(V2, "t", configured).decode(data)


def test_unknown_schema_id(configured):
    with pytest.raises(SerdeError, match=r"schema id 424242 is not in the schema registry"):
        bound(V2, "t", configured).decode(b"\x00" + (424242).to_bytes(4, "big") + b"\x02a\x02")


def test_body_that_does_not_match_its_schema_id(confluent, configured):
    sid = confluent.register_schema("wire.garbage-value", Schema(schema_text(V1), "AVRO"))
    with pytest.raises(SerdeError, match=rf"malformed Avro for schema id {sid}"):
        bound(V2, "wire.garbage", configured).decode(
            b"\x00" + sid.to_bytes(4, "big") + b"\xff\xff\xff\xff\xff\xff"
        )
    good = AvroSerde(V1).encode({"user": "a", "seq": 1})
    with pytest.raises(SerdeError, match=rf"malformed Avro for schema id {sid}: 2 bytes left over"):
        bound(V2, "wire.garbage", configured).decode(
            b"\x00" + sid.to_bytes(4, "big") + good + b"\x00\x00"
        )


def test_writer_schema_incompatible_with_the_reader(confluent, configured):
    sid = confluent.register_schema("wire.incompatible-value", Schema(schema_text(BAD), "AVRO"))
    body = AvroSerde(BAD).encode({"user": "a", "seq": "one"})
    with pytest.raises(
        SerdeError, match=rf"Avro written with schema id {sid} cannot be read as event_v2\.avsc"
    ):
        bound(V2, "wire.incompatible", configured).decode(b"\x00" + sid.to_bytes(4, "big") + body)


def test_non_avro_schema_id(confluent, configured):
    sid = confluent.register_schema("wire.json-value", Schema('{"type": "object"}', "JSON"))
    with pytest.raises(SerdeError, match=rf"schema id {sid} is a JSON schema, not Avro"):
        bound(V2, "wire.json", configured).decode(b"\x00" + sid.to_bytes(4, "big") + b"{}")


def test_wrong_credentials_are_a_registry_error_without_the_password(schema_registry):
    wrong = SchemaRegistry(schema_registry.url, "kwheel:wr0ng-pw")
    with pytest.raises(
        RegistryError,
        match=r"registering schema event_v1\.avsc under subject 'wire\.auth-value' "
        r"failed: HTTP 401",
    ) as e:
        bound(V1, "wire.auth", wrong).encode({"user": "a", "seq": 1})
    assert "wr0ng-pw" not in str(e.value)


def test_credentials_in_a_serde_url_are_used_and_stay_out_of_messages():
    with TestRegistry(auth=("me", "url-s3cret")) as r:
        s = AvroSerde(V1, registry=r.url.replace("http://", "http://me:url-s3cret@")).for_topic(
            "wire.userinfo", "value"
        )
        assert s.decode(s.encode({"user": "a", "seq": 1})) == {"user": "a", "seq": 1}
        wrong = AvroSerde(
            V1, registry=r.url.replace("http://", "http://me:wr0ng-s3cret@")
        ).for_topic("wire.userinfo", "value")
        with pytest.raises(
            RegistryError, match=rf"schema registry {r.url}: registering .* failed: HTTP 401"
        ) as e:
            wrong.encode({"user": "a", "seq": 1})
        assert "wr0ng-s3cret" not in str(e.value) and "me:" not in str(e.value)


def test_unreachable_registry_is_a_registry_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        RegistryError, match=rf"schema registry {url}: fetching schema id 1 failed: ConnectError"
    ):
        AvroSerde(V1, registry=url).for_topic("t", "value").decode(b"\x00\x00\x00\x00\x01\x02a\x02")
