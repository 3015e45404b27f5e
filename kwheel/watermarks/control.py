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


def _without(*names: str) -> fastavro.types.Schema:
    fields = [f for f in _SCHEMA_JSON["fields"] if f["name"] not in names]
    return fastavro.parse_schema({**_SCHEMA_JSON, "fields": fields})


# Controls of earlier kwheels, read with their writer schema (the newer fields take their
# defaults), newest first. Each writer schema only appended fields, so a record of an
# older one runs out of bytes under a newer one, and the next older one is tried.
# V2: before `kwheel reset` and `kwheel injector retire` (no `reset`, no `retired`).
_SCHEMA_V2 = _without("reset", "retired")
# V1: before announcements (no `announce`, no `owner`): tasks of that kwheel named no owner
# token, so readers keep their controls until a new opener announces itself.
_SCHEMA_V1 = _without("reset", "retired", "announce", "owner")
_OLDER = (_SCHEMA_V2, _SCHEMA_V1)


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
    reset: bool
    retired: bool


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
    # tasks: `kwheel reset` restarted the task from nothing: forget what it published before
    reset: bool = False
    # injectors: `kwheel injector retire` declared the instance finished for good
    retired: bool = False

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
            "reset": self.reset,
            "retired": self.retired,
        }
        fastavro.schemaless_writer(buf, _SCHEMA, record)
        return buf.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Control:
        # fastavro types what it reads as any Avro value; the schema makes it this record
        try:
            d = cast(_ControlRecord, fastavro.schemaless_reader(io.BytesIO(data), _SCHEMA))
        except (EOFError, ValueError, IndexError) as e:
            for older in _OLDER:
                try:
                    read = fastavro.schemaless_reader(io.BytesIO(data), older, _SCHEMA)
                    d = cast(_ControlRecord, read)
                    break
                except (EOFError, ValueError, IndexError):
                    continue
            else:
                raise e
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
            reset=d["reset"],
            retired=d["retired"],
        )

    @property
    def key(self) -> bytes:
        """The record key on the compacted watermark topic. Announcements have keys of their
        own, so compaction never replaces the newest announcement with a zombie's control;
        so do retirements, which a retired instance's later controls must not replace. A
        reset has the task's own key: compaction drops what it makes readers forget."""
        if self.announce:
            return f"announce:{self.producer}".encode()
        if self.retired:
            return f"retired:{self.producer}".encode()
        return self.producer.encode()


def task_producer_id(computation: str, partition: int) -> str:
    return f"task:{computation}/{partition}"


def injector_producer_id(name: str, instance: str) -> str:
    return f"injector:{name}/{instance}"
