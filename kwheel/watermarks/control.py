"""The watermark control record (Avro, ``schemas/watermark.avsc``) and its codec."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypedDict, cast

import fastavro

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "watermark.avsc"
_SCHEMA_JSON = json.loads(SCHEMA_PATH.read_text())
_SCHEMA = fastavro.parse_schema(_SCHEMA_JSON)
# Controls written before announcements existed (no `announce`, no `owner`): read with
# that writer schema, the new fields take their defaults. Tasks of that kwheel named no
# owner token, so readers keep their controls until a new opener announces itself.
_SCHEMA_V1 = fastavro.parse_schema(
    {
        **_SCHEMA_JSON,
        "fields": [f for f in _SCHEMA_JSON["fields"] if f["name"] not in ("announce", "owner")],
    }
)


class ProducerKind(StrEnum):
    """Who publishes a control: a task (its output watermark) or an injector (the low
    watermark of the source streams it writes). Members equal their Avro symbols."""

    TASK = "TASK"
    INJECTOR = "INJECTOR"


TASK = ProducerKind.TASK
INJECTOR = ProducerKind.INJECTOR


class _Position(TypedDict):
    topic: str
    partition: int
    offset: int


class _ControlRecord(TypedDict):
    """A control as fastavro writes and reads it (``schemas/watermark.avsc``)."""

    producer: str
    kind: str
    streams: list[str]
    watermark: int
    input_watermark: int
    positions: list[_Position]
    final: bool
    wall_time: int
    stats: dict[str, int]
    incarnation: int
    announce: bool
    owner: str


@dataclass
class Control:
    producer: str
    kind: ProducerKind
    streams: list[str]
    watermark: int
    positions: list[tuple[str, int, int]]  # (topic, partition, end offset)
    wall_time: int
    input_watermark: int = 0
    final: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    incarnation: int = 0
    announce: bool = False  # a task's new owner claiming it: no usable watermark (see ownership.py)
    owner: str = ""  # tasks: the token of the opening that announced this incarnation

    def encode(self) -> bytes:
        buf = io.BytesIO()
        record: _ControlRecord = {
            "producer": self.producer,
            "kind": self.kind,
            "streams": self.streams,
            "watermark": self.watermark,
            "input_watermark": self.input_watermark,
            "positions": [{"topic": t, "partition": p, "offset": o} for t, p, o in self.positions],
            "final": self.final,
            "wall_time": self.wall_time,
            "stats": self.stats,
            "incarnation": self.incarnation,
            "announce": self.announce,
            "owner": self.owner,
        }
        fastavro.schemaless_writer(buf, _SCHEMA, record)
        return buf.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Control:
        # fastavro types what it reads as any Avro value; the schema makes it this record
        try:
            d = cast(_ControlRecord, fastavro.schemaless_reader(io.BytesIO(data), _SCHEMA))
        except (EOFError, ValueError, IndexError):
            d = cast(
                _ControlRecord, fastavro.schemaless_reader(io.BytesIO(data), _SCHEMA_V1, _SCHEMA)
            )
        return cls(
            producer=d["producer"],
            kind=ProducerKind(d["kind"]),
            streams=list(d["streams"]),
            watermark=d["watermark"],
            positions=[(p["topic"], p["partition"], p["offset"]) for p in d["positions"]],
            wall_time=d["wall_time"],
            input_watermark=d["input_watermark"],
            final=d["final"],
            stats=dict(d["stats"]),
            incarnation=d["incarnation"],
            announce=d["announce"],
            owner=d["owner"],
        )

    @property
    def key(self) -> bytes:
        """The record key on the compacted watermark topic. Announcements have keys of their
        own, so compaction never replaces the newest announcement with a zombie's control."""
        return (f"announce:{self.producer}" if self.announce else self.producer).encode()


def task_producer_id(computation: str, partition: int) -> str:
    return f"task:{computation}/{partition}"


def injector_producer_id(name: str, instance: str) -> str:
    return f"injector:{name}/{instance}"
