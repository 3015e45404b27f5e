"""Serdes: how keys and values of a stream become bytes on Kafka and back."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Protocol

import fastavro
import orjson

from .errors import SerdeError


class Serde(Protocol):
    name: str

    def encode(self, obj: object) -> bytes: ...

    def decode(self, data: bytes) -> object: ...


class BytesSerde:
    """Raw bytes, passed through."""

    name = "bytes"

    def encode(self, obj: object) -> bytes:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj)
        raise SerdeError(f"bytes serde needs bytes, got {type(obj).__name__}")

    def decode(self, data: bytes) -> object:
        return data


class StrSerde:
    """UTF-8 text."""

    name = "str"

    def encode(self, obj: object) -> bytes:
        if isinstance(obj, str):
            return obj.encode()
        if isinstance(obj, bytes):
            return obj
        raise SerdeError(f"str serde needs str, got {type(obj).__name__}")

    def decode(self, data: bytes) -> object:
        try:
            return data.decode()
        except UnicodeDecodeError as e:
            raise SerdeError(f"not UTF-8 text: {e}") from None


class JsonSerde:
    """JSON documents (UTF-8, compact), through orjson."""

    name = "json"

    def encode(self, obj: object) -> bytes:
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError) as e:
            raise SerdeError(f"value is not JSON-serialisable: {e}") from None

    def decode(self, data: bytes) -> object:
        try:
            return orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError) as e:
            raise SerdeError(f"malformed JSON: {e}") from None


class AvroSerde:
    """Avro binary (schemaless: no container header), schema from an ``.avsc`` file."""

    def __init__(self, schema_path: str | Path):
        path = Path(schema_path)
        if not path.is_file():
            raise SerdeError(f"Avro schema file not found: {path}")
        try:
            self.schema = fastavro.parse_schema(json.loads(path.read_text()))
        except Exception as e:  # fastavro raises several types for bad schemas
            raise SerdeError(f"invalid Avro schema {path}: {e}") from None
        self.name = f"avro:{path.name}"
        self.path = path

    def encode(self, obj: object) -> bytes:
        buf = io.BytesIO()
        try:
            # the writer alone coerces some mismatches (1.5 into a long): validate first
            fastavro.validate(obj, self.schema, raise_errors=True)
            fastavro.schemaless_writer(buf, self.schema, obj)
        except Exception as e:
            raise SerdeError(f"value does not match Avro schema {self.path.name}: {e}") from None
        return buf.getvalue()

    def decode(self, data: bytes) -> object:
        try:
            return fastavro.schemaless_reader(io.BytesIO(data), self.schema)
        except Exception as e:
            raise SerdeError(f"malformed Avro for schema {self.path.name}: {e}") from None


BYTES = BytesSerde()
STR = StrSerde()
JSON = JsonSerde()


def resolve(serde: Serde | str) -> Serde:
    """Accept a serde object or one of the names ``bytes``, ``str``, ``json``, ``avro:PATH``."""
    if not isinstance(serde, str):
        return serde
    if serde in ("bytes", "str", "json"):
        return {"bytes": BYTES, "str": STR, "json": JSON}[serde]
    if serde.startswith("avro:"):
        return AvroSerde(serde[5:])
    raise SerdeError(f"unknown serde {serde!r}: use bytes, str, json or avro:PATH")
