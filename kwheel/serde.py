"""Serdes: how keys and values of a stream become bytes on Kafka and back."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import fastavro
import orjson
from fastavro.read import SchemaResolutionError

from . import registry
from .errors import SerdeError
from .registry import SchemaRegistry
from .registry import redact as _redact

if TYPE_CHECKING:
    from fastavro.types import Schema


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


MAGIC = b"\x00"  # first byte of the Confluent wire format, then a 4-byte big-endian schema id
_HEADER = 5

#: an ``.avsc`` file, or the schema as JSON data
SchemaSource = str | Path | dict[str, Any]


class AvroSerde:
    """Avro values through fastavro, with a schema from an ``.avsc`` file or a dict.

    Plain (default): schemaless Avro binary (no header), written with ``schema``. Readers
    that were built with a newer ``reader_schema`` resolve what was written with ``schema``
    to it (schema evolution: added fields with defaults, removed fields, promotions).

    With a registry (``registry=True``: the worker's ``schema_registry_url``; or a URL):
    the Confluent wire format, byte 0x00, the 4-byte big-endian schema id, then the Avro
    body. Encoding registers ``schema`` under the subject ``<topic>-value`` (``<topic>-key``
    for keys; ``Pipeline.stream`` fills in the topic) and reuses its id; decoding fetches
    the writer schema by the record's id (once per id) and resolves it to ``reader_schema``
    (default ``schema``). ``registry=True`` names no registry: pipelines are built at
    import time, before a worker has read its configuration, so what runs the pipeline
    hands it its configured one (``with_registry``, kwheel.registry).
    """

    def __init__(
        self,
        schema: SchemaSource,
        reader_schema: SchemaSource | None = None,
        registry: bool | str = False,
        subject: str | None = None,
    ):
        self.raw_schema, self.path, label = _load_schema(schema)
        self.schema = _parse(self.raw_schema, label)
        if reader_schema is None:
            self.reader_schema = self.schema
            self.reader_label = label
        else:
            raw, _, self.reader_label = _load_schema(reader_schema)
            self.reader_schema = _parse(raw, self.reader_label)
        self.label = label
        if not isinstance(registry, bool) and not (
            isinstance(registry, str) and registry.startswith(("http://", "https://"))
        ):
            shown = _redact(registry) if isinstance(registry, str) else registry
            raise SerdeError(
                f"Avro serde {label}: registry must be True or an http(s):// URL, got {shown!r}"
            )
        self.registry = registry
        # the registry used: its own URL's, or the configured one once handed over
        self._registry = SchemaRegistry(registry) if isinstance(registry, str) else None
        self.subject = subject
        self.name = f"avro+registry:{label}" if registry else f"avro:{label}"
        self._id: int | None = None  # of ``schema`` under ``subject``, once registered
        self._writers: dict[int, Schema] = {}  # schema id -> parsed writer schema

    def for_topic(self, topic: str, part: str) -> AvroSerde:
        """This serde for a stream's topic: with a registry, its subject ``<topic>-<part>``."""
        if not self.registry or self.subject is not None:
            return self
        bound = copy.copy(self)
        bound.subject = f"{topic}-{part}"
        bound._writers = self._writers
        return bound

    def with_registry(self, configured: SchemaRegistry) -> AvroSerde:
        """This serde using the configured registry: a copy if it was declared with
        ``registry=True`` or with the configured URL (then the configured auth applies)."""
        if self.registry is not True and self.registry != configured.url:
            return self
        bound = copy.copy(self)
        bound._registry = configured
        return bound

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, obj: object) -> bytes:
        buf = io.BytesIO()
        if self.registry:
            buf.write(MAGIC + self._schema_id().to_bytes(4, "big"))
        try:
            # the writer alone coerces some mismatches (1.5 into a long): validate first
            fastavro.validate(obj, self.schema, raise_errors=True)
            fastavro.schemaless_writer(buf, self.schema, obj)
        except Exception as e:
            raise SerdeError(f"value does not match Avro schema {self.label}: {e}") from None
        return buf.getvalue()

    def _schema_id(self) -> int:
        if self._id is None:
            if self.subject is None:
                raise SerdeError(
                    f"Avro serde {self.label} has a registry but no subject: declare it on a "
                    f"stream (subject <topic>-value) or pass subject="
                )
            from confluent_kafka.schema_registry import Schema

            reg = self._used_registry()
            c = reg.client()
            try:
                self._id = c.register_schema(
                    self.subject, Schema(json.dumps(self.raw_schema), "AVRO")
                )
            except Exception as e:
                raise reg.failure(
                    f"registering schema {self.label} under subject {self.subject!r}", e
                ) from None
        return self._id

    def _used_registry(self) -> SchemaRegistry:
        if self._registry is None:
            raise registry.missing()
        return self._registry

    # ---- decoding -------------------------------------------------------------------------
    def decode(self, data: bytes) -> object:
        if not self.registry:
            return self._read(data, 0, self.schema, f"schema {self.label}")
        if data is None or len(data) < _HEADER:
            n = 0 if data is None else len(data)
            raise SerdeError(
                f"not Confluent Avro wire format: {n} bytes, shorter than the 5-byte header "
                f"(magic byte 0x00 + schema id)"
            )
        if data[0] != 0:
            raise SerdeError(
                f"not Confluent Avro wire format: first byte is 0x{data[0]:02x}, expected "
                f"the magic byte 0x00"
            )
        sid = int.from_bytes(data[1:_HEADER], "big")
        return self._read(data, _HEADER, self._writer(sid), f"schema id {sid}")

    def _writer(self, sid: int) -> Schema:
        w = self._writers.get(sid)
        if w is not None:
            return w
        reg = self._used_registry()
        c = reg.client()
        try:
            found = c.get_schema(sid)
        except Exception as e:
            if getattr(e, "http_status_code", None) == 404:
                raise SerdeError(f"schema id {sid} is not in the schema registry") from None
            raise reg.failure(f"fetching schema id {sid}", e) from None
        if (found.schema_type or "AVRO") != "AVRO":
            raise SerdeError(f"schema id {sid} is a {found.schema_type} schema, not Avro")
        if found.schema_str is None:  # an answer without the "schema" field
            raise SerdeError(f"schema id {sid} came from the schema registry without its schema")
        try:
            w = fastavro.parse_schema(json.loads(found.schema_str))
        except Exception as e:
            raise SerdeError(f"schema id {sid} is not a usable Avro schema: {e}") from None
        self._writers[sid] = w
        return w

    def _read(self, data: bytes, start: int, writer: Schema, what: str) -> object:
        buf = io.BytesIO(data)
        buf.seek(start)
        reader = None if self.reader_schema is writer else self.reader_schema
        try:
            obj = fastavro.schemaless_reader(buf, writer, reader)
        except SchemaResolutionError as e:
            raise SerdeError(
                f"Avro written with {what} cannot be read as {self.reader_label}: {_short(e)}"
            ) from None
        except Exception as e:
            raise SerdeError(
                f"malformed Avro for {what}: {type(e).__name__}: {_short(e)}"
            ) from None
        left = len(data) - buf.tell()
        if left:
            raise SerdeError(f"malformed Avro for {what}: {left} bytes left over after the record")
        return obj


def _short(e: Exception, limit: int = 200) -> str:
    """fastavro's message, cut: its schema mismatches print both whole schemas."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _load_schema(source: SchemaSource) -> tuple[Schema, Path | None, str]:
    """(schema as JSON data, its file or None, a short label for messages)."""
    if isinstance(source, dict):
        return source, None, str(source.get("name", source.get("type", "schema")))
    path = Path(source)
    if not path.is_file():
        raise SerdeError(f"Avro schema file not found: {path}")
    try:
        return json.loads(path.read_text()), path, path.name
    except ValueError as e:
        raise SerdeError(f"invalid Avro schema {path}: {e}") from None


def _parse(raw: Schema, label: str) -> Schema:
    try:
        return fastavro.parse_schema(raw)
    except Exception as e:  # fastavro raises several types for bad schemas
        raise SerdeError(f"invalid Avro schema {label}: {e}") from None


BYTES = BytesSerde()
STR = StrSerde()
JSON = JsonSerde()


def resolve(serde: Serde | str) -> Serde:
    """Accept a serde object or one of the names ``bytes``, ``str``, ``json``, ``avro:PATH``
    and ``avro+registry:PATH`` (Confluent wire format through the configured registry)."""
    if not isinstance(serde, str):
        return serde
    if serde in ("bytes", "str", "json"):
        named: dict[str, Serde] = {"bytes": BYTES, "str": STR, "json": JSON}
        return named[serde]
    if serde.startswith("avro:"):
        return AvroSerde(serde[5:])
    if serde.startswith("avro+registry:"):
        return AvroSerde(serde[len("avro+registry:") :], registry=True)
    raise SerdeError(
        f"unknown serde {serde!r}: use bytes, str, json, avro:PATH or avro+registry:PATH"
    )


def with_registry(serde: Serde, configured: SchemaRegistry | None) -> Serde:
    """The serde as run with the ``configured`` registry (of a worker's configuration):
    serdes that take one (AvroSerde with ``registry=True``) get a bound copy."""
    bind = getattr(serde, "with_registry", None)
    return bind(configured) if bind is not None and configured is not None else serde


def for_topic(serde: Serde, topic: str, part: str) -> Serde:
    """The serde as used for ``part`` ("key" or "value") of ``topic``: serdes that name
    registry subjects after their topic (AvroSerde with a registry) get a bound copy."""
    bind = getattr(serde, "for_topic", None)
    return bind(topic, part) if bind is not None else serde
