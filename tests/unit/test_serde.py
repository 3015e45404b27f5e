"""Serdes: round trips, clear SerdeErrors, name resolution, Avro schema files."""

from __future__ import annotations

import json

import pytest

from kwheel.errors import SerdeError
from kwheel.serde import BYTES, JSON, STR, AvroSerde, BytesSerde, JsonSerde, StrSerde, resolve

USER_SCHEMA = {
    "type": "record",
    "name": "UserCount",
    "fields": [
        {"name": "user", "type": "string"},
        {"name": "count", "type": "long"},
    ],
}


@pytest.fixture
def user_avsc(tmp_path):
    path = tmp_path / "user_count.avsc"
    path.write_text(json.dumps(USER_SCHEMA))
    return path


# ---- bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [b"", b"\x00\xffabc", bytearray(b"xy"), memoryview(b"mv")])
def test_bytes_round_trip(obj):
    data = BYTES.encode(obj)
    assert isinstance(data, bytes)
    assert BYTES.decode(data) == bytes(obj)


def test_bytes_rejects_str():
    with pytest.raises(SerdeError, match=r"bytes serde needs bytes, got str"):
        BYTES.encode("text")


# ---- str -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ✓", "日本"])
def test_str_round_trip(text):
    assert STR.decode(STR.encode(text)) == text


def test_str_encodes_utf8():
    assert STR.encode("é") == b"\xc3\xa9"


def test_str_rejects_int():
    with pytest.raises(SerdeError, match=r"str serde needs str, got int"):
        STR.encode(5)


def test_str_decode_non_utf8_raises_serde_error():
    with pytest.raises(SerdeError, match=r"not UTF-8 text"):
        STR.decode(b"\xff\xfe")


# ---- json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        0,
        -3,
        1.25,
        "s",
        "ünïcode",
        [],
        [1, "a", None],
        {},
        {"user": "u1", "count": 3, "tags": ["x"]},
    ],
)
def test_json_round_trip(obj):
    assert JSON.decode(JSON.encode(obj)) == obj


def test_json_is_compact_utf8():
    assert JSON.encode({"a": [1, 2], "é": "ü"}) == '{"a":[1,2],"é":"ü"}'.encode()


def test_json_encode_unserialisable_raises_serde_error():
    with pytest.raises(SerdeError, match=r"value is not JSON-serialisable"):
        JSON.encode({"s": {1, 2}})


def test_json_decode_malformed_raises_serde_error():
    with pytest.raises(SerdeError, match=r"malformed JSON"):
        JSON.decode(b'{"a": ')


def test_json_decode_non_utf8_raises_serde_error():
    with pytest.raises(SerdeError, match=r"malformed JSON"):
        JSON.decode(b'"\xff"')


def test_json_decode_empty_raises_serde_error():
    with pytest.raises(SerdeError, match=r"malformed JSON"):
        JSON.decode(b"")


# ---- resolve ---------------------------------------------------------------------------------


def test_resolve_builtin_names():
    assert resolve("bytes") is BYTES
    assert resolve("str") is STR
    assert resolve("json") is JSON
    assert isinstance(BYTES, BytesSerde) and BYTES.name == "bytes"
    assert isinstance(STR, StrSerde) and STR.name == "str"
    assert isinstance(JSON, JsonSerde) and JSON.name == "json"


def test_resolve_passes_serde_objects_through():
    custom = JsonSerde()
    assert resolve(custom) is custom


def test_resolve_unknown_name_raises_serde_error():
    with pytest.raises(
        SerdeError,
        match=r"unknown serde 'yaml': use bytes, str, json, avro:PATH or avro\+registry:PATH",
    ):
        resolve("yaml")


def test_resolve_avro_path(user_avsc):
    s = resolve(f"avro:{user_avsc}")
    assert isinstance(s, AvroSerde)
    assert s.name == "avro:user_count.avsc"
    assert s.path == user_avsc


# ---- avro ----------------------------------------------------------------------------------


def test_avro_round_trip(user_avsc):
    s = AvroSerde(user_avsc)
    value = {"user": "ü1", "count": 2**40}
    assert s.decode(s.encode(value)) == value


def test_avro_is_schemaless_binary(user_avsc):
    # no container header: "a" (zigzag len 1 -> 0x02) then count 1 (zigzag -> 0x02)
    assert AvroSerde(user_avsc).encode({"user": "a", "count": 1}) == b"\x02a\x02"


def test_avro_missing_schema_file_raises_serde_error(tmp_path):
    missing = tmp_path / "missing.avsc"
    with pytest.raises(SerdeError, match=r"Avro schema file not found: .*missing\.avsc"):
        AvroSerde(missing)


def test_avro_schema_path_that_is_a_directory_is_not_found(tmp_path):
    with pytest.raises(SerdeError, match=r"Avro schema file not found"):
        AvroSerde(tmp_path)


def test_avro_schema_not_json_raises_serde_error(tmp_path):
    path = tmp_path / "bad.avsc"
    path.write_text("{not json")
    with pytest.raises(SerdeError, match=r"invalid Avro schema .*bad\.avsc"):
        AvroSerde(path)


def test_avro_schema_with_unknown_type_raises_serde_error(tmp_path):
    path = tmp_path / "bad.avsc"
    path.write_text(
        json.dumps({"type": "record", "name": "R", "fields": [{"name": "x", "type": "nosuchtype"}]})
    )
    with pytest.raises(SerdeError, match=r"invalid Avro schema"):
        AvroSerde(path)


def test_avro_value_with_wrong_field_type_raises_serde_error(user_avsc):
    with pytest.raises(SerdeError, match=r"value does not match Avro schema user_count\.avsc"):
        AvroSerde(user_avsc).encode({"user": "a", "count": "many"})


def test_avro_value_missing_field_raises_serde_error(user_avsc):
    with pytest.raises(SerdeError, match=r"value does not match Avro schema user_count\.avsc"):
        AvroSerde(user_avsc).encode({"user": "a"})


def test_avro_value_not_a_record_raises_serde_error(user_avsc):
    with pytest.raises(SerdeError, match=r"value does not match Avro schema"):
        AvroSerde(user_avsc).encode("just a string")


# regression: fastavro's writer truncated 1.5 into a long (serde.py)
def test_avro_float_for_long_field_raises_serde_error(user_avsc):
    with pytest.raises(SerdeError, match=r"value does not match Avro schema"):
        AvroSerde(user_avsc).encode({"user": "a", "count": 1.5})


def test_avro_truncated_data_raises_serde_error(user_avsc):
    with pytest.raises(SerdeError, match=r"malformed Avro for schema user_count\.avsc"):
        AvroSerde(user_avsc).decode(b"\x02")
