"""The unit of data: a keyed, timestamped value with a unique id (MillWheel's record)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

Key = str | bytes


class TimeDomain(StrEnum):
    """When a timer fires: ``EVENT`` once the low watermark reaches its time, ``WALL`` once
    the clock (ms since the epoch) does. Members equal their strings ("event", "wall")."""

    EVENT = "event"
    WALL = "wall"


@dataclass(slots=True)
class Record:
    """One record as a computation sees it.

    ``id`` is unique per record and deterministic when derived from an input record, so a
    replay after a crash produces the same ids and downstream dedup recognises them.
    ``late`` is True when the record's timestamp is behind the consuming task's low watermark.
    """

    key: Key
    value: object
    timestamp: int
    id: bytes
    stream: str = ""
    late: bool = False


@dataclass(slots=True, frozen=True)
class Timer:
    """A timer that fired: its per-key ``tag``, its time and its domain."""

    key: Key
    tag: str
    timestamp: int
    domain: TimeDomain = TimeDomain.EVENT
