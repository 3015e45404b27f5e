"""Where injectors get records: a small Source protocol and the built-in sources.

A Source is polled for records; ``committed()`` tells it everything returned so far is
durably in Kafka and covered by a published watermark, so it may acknowledge upstream
(commit offsets, delete files...). Sources are at-least-once: after a crash they may
return records again, with the same ids, and downstream dedup drops the copies.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, cast

from confluent_kafka import Consumer, KafkaError, KafkaException

from . import ids
from .config import WorkerConfig
from .errors import ConfigError, SerdeError
from .kafka import clients
from .record import Key
from .registry import SchemaRegistry
from .serde import Serde, resolve, with_registry
from .watermarks import MIN_WATERMARK

if TYPE_CHECKING:
    from .kafka.clients import ConsumedMessage


@dataclass
class SourceRecord:
    key: Key
    value: object
    timestamp: int
    id: bytes | None = None  # None: a fresh random id
    stream: str | None = None  # None: the injector's first output


@dataclass
class SourceEnv:
    """What a source learns when its injector process starts."""

    pipeline: str
    injector: str
    instance: int  # this process, 0 .. instances-1
    instances: int  # how many processes share the injector's work
    cfg: WorkerConfig


class Source(Protocol):
    def open(self, env: SourceEnv) -> None: ...

    def poll(self, max_records: int) -> list[SourceRecord] | None:
        """Up to ``max_records`` records ([] when none now); None once finished for good."""

    def watermark(self) -> int | None:
        """A source's own low watermark, or None to use the injector's bounded-disorder policy."""

    def committed(self) -> None: ...

    def close(self) -> None: ...


class _Unacknowledged:
    """Defaults for sources with nothing to acknowledge and no watermark of their own."""

    def watermark(self) -> int | None:
        return None

    def committed(self) -> None:
        pass

    def close(self) -> None:
        pass


class Synthetic(_Unacknowledged):
    """Records from a generator function ``generate(instance, instances)``; ends when it does."""

    def __init__(self, generate: Callable[[int, int], Iterable[SourceRecord]]):
        self._generate = generate
        self._it: Iterator[SourceRecord] | None = None

    def open(self, env: SourceEnv) -> None:
        self._it = iter(self._generate(env.instance, env.instances))

    def poll(self, max_records: int) -> list[SourceRecord] | None:
        out = []
        for r in cast("Iterator[SourceRecord]", self._it):  # set by open(), called first
            out.append(r)
            if len(out) >= max_records:
                break
        return out or None


class JsonLines(_Unacknowledged):
    """One JSON document per line, from a file or ``-`` (stdin). Ids derive from the file
    and line number, so re-reading a file after a crash produces duplicates that dedup
    drops. With several injector processes each takes every n-th line."""

    def __init__(
        self,
        path: str,
        key: Callable[[dict[str, Any]], Key],
        timestamp: Callable[[dict[str, Any]], int] | None = None,
    ):
        self.path = path
        self._key = key
        self._timestamp = timestamp
        self._lines: Iterator[tuple[int, str]] | None = None
        self._file: TextIO | None = None
        self._env: SourceEnv | None = None

    def open(self, env: SourceEnv) -> None:
        self._env = env
        if self.path == "-":
            self._file = sys.stdin
        else:
            p = Path(self.path)
            if not p.is_file():
                raise ConfigError(f"injector {env.injector!r}: no such file {self.path}")
            self._file = p.open(encoding="utf-8")
        self._lines = enumerate(self._file, start=1)

    def poll(self, max_records: int) -> list[SourceRecord] | None:
        env = cast(SourceEnv, self._env)  # both set by open(), called first
        out = []
        for lineno, line in cast("Iterator[tuple[int, str]]", self._lines):
            if (lineno - 1) % env.instances != env.instance or not line.strip():
                continue
            try:
                value = json.loads(line)
                key = self._key(value)
                ts = int(self._timestamp(value)) if self._timestamp else None
            except Exception as e:
                raise SerdeError(f"{self.path}:{lineno}: {type(e).__name__}: {e}") from None
            rid = blake2b(f"{self.path}:{lineno}".encode(), digest_size=ids.ID_BYTES).digest()
            out.append(SourceRecord(key, value, ts if ts is not None else _now_ms(), rid))
            if len(out) >= max_records:
                return out
        return out or None

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdin:
            self._file.close()


class KafkaTopic:
    """An existing topic written by other producers. Keys and timestamps come from user
    functions of the decoded value (default: the record's own key and timestamp); ids
    derive from topic/partition/offset, so re-reads are dropped downstream. Injector
    processes share the topic's partitions through a consumer group and commit its
    offsets only once what they read is covered by a published watermark.

    The watermark is per partition (newest timestamp seen minus ``disorder_ms``), the min
    over partitions that still have data; a partition at its end holds nothing back."""

    def __init__(
        self,
        topic: str,
        value: Serde | str = "json",
        key: Callable[[object], Key] | None = None,
        timestamp: Callable[[object], int] | None = None,
        disorder_ms: int = 0,
    ):
        self.topic = topic
        self._serde = resolve(value)
        self._key = key
        self._timestamp = timestamp
        self._disorder = disorder_ms
        self._c: Consumer | None = None
        self._newest: dict[int, int] = {}
        self._at_end: set[int] = set()

    def open(self, env: SourceEnv) -> None:
        self._serde = with_registry(self._serde, SchemaRegistry.from_config(env.cfg))
        conf = clients.base_config(env.cfg)
        conf.update(
            {
                "group.id": f"{env.pipeline}.inject.{env.injector}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        if env.cfg.slot:
            conf["group.instance.id"] = f"{env.cfg.slot}-{env.instance}"
        self._c = Consumer(conf)
        self._c.subscribe([self.topic])

    def poll(self, max_records: int) -> list[SourceRecord] | None:
        out = []
        c = cast(Consumer, self._c)  # set by open(), called first
        for m in cast("list[ConsumedMessage]", c.consume(max_records, 0.2)):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(m.partition())
                    continue
                raise KafkaException(err)
            self._at_end.discard(m.partition())
            try:
                # a tombstone (no value) goes to the serde too, as any undecodable value
                value = self._serde.decode(m.value())  # type: ignore[arg-type]
                key = self._key(value) if self._key else (m.key() or b"").decode()
                ts = int(self._timestamp(value)) if self._timestamp else m.timestamp()[1]
            except Exception as e:
                raise SerdeError(
                    f"{self.topic}[{m.partition()}]@{m.offset()}: {type(e).__name__}: {e}"
                ) from None
            if ts > self._newest.get(m.partition(), MIN_WATERMARK):
                self._newest[m.partition()] = ts
            out.append(
                SourceRecord(
                    key, value, ts, ids.from_position(m.topic(), m.partition(), m.offset())
                )
            )
        return out

    def watermark(self) -> int | None:
        assigned = {tp.partition for tp in cast(Consumer, self._c).assignment()}
        if not assigned:
            return None
        busy = [self._newest.get(p, MIN_WATERMARK) for p in assigned if p not in self._at_end]
        if not busy:  # every partition at its end: as far as anything seen
            busy = [max(self._newest.values(), default=MIN_WATERMARK)]
        w = min(busy)
        return MIN_WATERMARK if w == MIN_WATERMARK else w - self._disorder

    def committed(self) -> None:
        try:
            cast(Consumer, self._c).commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                raise

    def close(self) -> None:
        if self._c is not None:
            self._c.close()


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
