"""The RocksDB store of one task: a materialised view of its changelog partition.

Writes arrive only as whole committed batches (``apply``), each in one atomic RocksDB
write batch together with the changelog offset it reaches, so the store is always equal
to a prefix of the changelog and restore resumes from ``applied_offset + 1``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, cast

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from ..errors import StateError
from ..record import TimeDomain
from . import layout

log = logging.getLogger("kwheel.store")


# Changelog kinds stored as they are, with no derived keys to maintain (first byte as int).
_PLAIN_KINDS = frozenset({layout.STATE[0], layout.WATERMARK[0]})


class RawRdict(Protocol):
    """The calls the store makes on its Rdict, typed as they are in raw mode
    (``Options(raw_mode=True)``): keys and values are bytes. rocksdict's stub types them
    for its default mode, which pickles any key and value."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def keys(self, *, from_key: bytes | None = ...) -> Iterator[bytes]: ...

    def items(self, *, from_key: bytes | None = ...) -> Iterator[tuple[bytes, bytes]]: ...

    def write(self, write_batch: WriteBatch, /) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TaskStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timers: int | None = None  # timer_count, once read
        self._lock = _hold_lock(self.path.with_name(self.path.name + ".lock"), self.path)
        try:
            self._db = self._open()
        except Exception as e:  # a store damaged by a crash: the changelog rebuilds it
            log.warning(
                "state store %s cannot be opened (%s): rebuilding it from the changelog",
                self.path,
                e,
            )
            self._remove()
            self._db = self._open()

    def _open(self) -> RawRdict:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        db = Rdict(str(self.path), opts)
        # No write-ahead log: the changelog is the log. After a crash RocksDB recovers a
        # prefix of the write batches, whose applied offset says where restore resumes.
        wo = WriteOptions()
        # rocksdict's stub declares disable_wal a method: it is a settable property
        wo.disable_wal = True  # type: ignore[method-assign, assignment]
        db.set_write_options(wo)
        return cast(RawRdict, db)  # opened in raw mode

    @property
    def applied_offset(self) -> int:
        """Offset of the last changelog record applied, -1 when none."""
        raw = self._db.get(layout.APPLIED_OFFSET)
        return -1 if raw is None else layout.decode_u64(raw)

    @property
    def applied_at_ms(self) -> int:
        """Wall time of the last apply (0 when never): how stale the store may be."""
        raw = self._db.get(layout.APPLIED_AT)
        return 0 if raw is None else layout.decode_u64(raw)

    @property
    def next_batch(self) -> int:
        raw = self._db.get(layout.NEXT_BATCH)
        return 0 if raw is None else layout.decode_u64(raw)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def apply(
        self,
        changes: Iterable[tuple[bytes, bytes | None]],
        offset: int,
        next_batch: int | None = None,
        fresh_ids: dict[bytes, int] | None = None,
    ) -> None:
        """Apply changelog records up to ``offset`` atomically. ``fresh_ids`` are the
        decoded contents of the one new id batch among them (saves decoding it again)."""
        wb = WriteBatch(raw_mode=True)
        written: dict[bytes, bytes | None] = {}  # this batch's values, for later deletes in it

        def old_value(k: bytes) -> bytes | None:
            return written[k] if k in written else self._db.get(k)

        restored_batch = self.next_batch if next_batch is None else 0
        timers = self.timer_count
        put, delete = wb.put, wb.delete
        plain = _PLAIN_KINDS
        for key, value in changes:
            if key[0] in plain:  # state and watermark: written as they are (most records)
                if value is None:
                    delete(key)
                else:
                    put(key, value)
                continue
            kind = key[:1]
            if kind == layout.TIMER:
                old = old_value(key)
                if old is not None:
                    wb.delete(layout.timer_index_key_of(key, old))
                    timers -= 1
                if value is not None:
                    wb.put(layout.timer_index_key_of(key, value), b"")
                    timers += 1
            elif kind == layout.ID_BATCH:
                if value is None:
                    old = old_value(key)
                    for rid, _ in layout.decode_id_batch(old or b""):
                        wb.delete(layout.SEEN + rid)
                else:
                    ids = (
                        fresh_ids.items()
                        if fresh_ids is not None
                        else layout.decode_id_batch(value)
                    )
                    seen, u64 = layout.SEEN, layout.encode_u64
                    for rid, ts in ids:
                        put(seen + rid, u64(ts))
                    if next_batch is None:
                        # restoring: keep batch numbers ahead of every batch seen
                        restored_batch = max(restored_batch, layout.decode_u64(key[1:]) + 1)
            written[key] = value
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        wb.put(
            layout.NEXT_BATCH,
            layout.encode_u64(restored_batch if next_batch is None else next_batch),
        )
        wb.put(layout.APPLIED_OFFSET, layout.encode_u64(offset))
        wb.put(layout.APPLIED_AT, layout.encode_u64(int(time.time() * 1000)))
        if timers != self._timers:
            wb.put(layout.TIMER_COUNT, layout.encode_u64(timers))
        self._db.write(wb)
        self._timers = timers

    @property
    def timer_count(self) -> int:
        """How many timers the store holds: kept by ``apply`` in the same write batch, so
        opening a task with a million timers does not count them. A store written before
        the count was kept is counted once."""
        if self._timers is None:
            raw = self._db.get(layout.TIMER_COUNT)
            self._timers = (
                self.count_prefix(layout.TIMER) if raw is None else layout.decode_u64(raw)
            )
        return self._timers

    def checkpoint(self) -> None:
        """Persist what is applied so far (there is no WAL): a long restore killed midway
        then resumes from here instead of from the start."""
        self._db.flush()

    def id_batches(self) -> Iterator[tuple[int, int]]:
        """(batch number, newest timestamp in it) of every id batch still kept."""
        for key, value in self._db.items(from_key=layout.ID_BATCH):
            if key[:1] != layout.ID_BATCH:
                break
            ts = [t for _, t in layout.decode_id_batch(value)]
            yield layout.decode_u64(key[1:]), max(ts, default=0)

    def seen_ids(self) -> Iterator[bytes]:
        """Every record id the store has seen (to rebuild the Bloom filter)."""
        for key in self._db.keys(from_key=layout.SEEN):
            if key[:1] != layout.SEEN:
                break
            yield key[1:]

    def timers(self, domain: TimeDomain, until: int) -> Iterator[tuple[int, bytes]]:
        """(time, timer key) of committed timers of a domain with time <= until, in time order."""
        prefix = layout.timer_index_prefix(domain)
        for ikey in self._db.keys(from_key=prefix):
            if ikey[:2] != prefix:
                break
            ts, tkey = layout.split_timer_index_key(ikey)
            if ts > until:
                break
            yield ts, tkey

    def count_prefix(self, prefix: bytes) -> int:
        n = 0
        for key in self._db.keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            n += 1
        return n

    def has_seen(self, rid: bytes) -> bool:
        return self._db.get(layout.SEEN + rid) is not None

    def wipe(self) -> None:
        """Drop every local byte (the changelog is the source of truth)."""
        self._db.close()
        self._remove()
        self._db = self._open()
        self._timers = None

    def _remove(self) -> None:
        # rename first: a crash mid-delete must not leave a half store under the real name
        if self.path.exists():
            doomed = self.path.with_name(
                f"{self.path.name}.deleting-{os.getpid()}-{time.monotonic_ns()}"
            )
            os.replace(self.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        try:
            self._db.flush()  # no WAL: persist the memtable before letting go
            self._db.close()
        finally:
            os.close(self._lock)  # releases the lock


def _hold_lock(lock_path: Path, store_path: Path) -> int:
    """Lock the store for this process (a file lock next to it, released by the kernel
    when the process dies, SIGKILL included). Held by another process means in use, not
    damaged: RocksDB's own LOCK would say the same, but only in its message text."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateError(f"state store {store_path} is in use by another process") from None
    return fd
