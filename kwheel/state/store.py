"""The RocksDB store of one task: a materialised view of its changelog partition.

Writes arrive only as whole committed batches (``apply``), each in one atomic RocksDB
write batch together with the changelog offset it reaches, so the store is always equal
to a prefix of the changelog and restore resumes from ``applied_offset + 1``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from . import layout


class TaskStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> Rdict:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        return Rdict(str(self.path), opts)

    @property
    def applied_offset(self) -> int:
        """Offset of the last changelog record applied, -1 when none."""
        raw = self._db.get(layout.APPLIED_OFFSET)
        return -1 if raw is None else layout.decode_u64(raw)

    @property
    def next_batch(self) -> int:
        raw = self._db.get(layout.NEXT_BATCH)
        return 0 if raw is None else layout.decode_u64(raw)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def apply(self, changes: Iterable[tuple[bytes, bytes | None]], offset: int, next_batch: int | None = None) -> None:
        """Apply changelog records up to ``offset`` atomically."""
        wb = WriteBatch(raw_mode=True)
        for key, value in changes:
            if key[:1] == layout.ID_BATCH:
                if value is None:
                    old = self._db.get(key)
                    for rid, _ in layout.decode_id_batch(old or b""):
                        wb.delete(layout.SEEN + rid)
                else:
                    for rid, ts in layout.decode_id_batch(value):
                        wb.put(layout.SEEN + rid, layout.encode_u64(ts))
                    if next_batch is None:
                        # restoring: keep batch numbers ahead of every batch seen
                        nb = layout.decode_u64(key[1:]) + 1
                        if nb > self.next_batch:
                            wb.put(layout.NEXT_BATCH, layout.encode_u64(nb))
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        if next_batch is not None:
            wb.put(layout.NEXT_BATCH, layout.encode_u64(next_batch))
        wb.put(layout.APPLIED_OFFSET, layout.encode_u64(offset))
        self._db.write(wb)

    def seen_ids(self) -> Iterator[bytes]:
        """Every record id the store has seen (to rebuild the Bloom filter)."""
        for key in self._db.keys(from_key=layout.SEEN):
            if key[:1] != layout.SEEN:
                break
            yield key[1:]

    def has_seen(self, rid: bytes) -> bool:
        return self._db.get(layout.SEEN + rid) is not None

    def wipe(self) -> None:
        """Drop every local byte (the changelog is the source of truth)."""
        self._db.close()
        Rdict.destroy(str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()

    def close(self) -> None:
        self._db.close()
