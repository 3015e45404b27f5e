"""The record ids a task has seen: how it drops a second copy of a record from outside.

Committed ids live in the store, grouped by the batch that first saw them: one changelog
record per batch (``i<batch>``) and one derived store entry per id (``d<id>``). A Bloom
filter in front answers most lookups of new ids without touching RocksDB. Batches whose
newest id is far behind the watermark (``dedup_horizon_ms``) are forgotten: a copy of one
of their records now would be very late anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rbloom import Bloom

from ..state import layout
from ..state.store import TaskStore

MIN_BLOOM_CAPACITY = 100_000
BLOOM_FALSE_POSITIVES = 0.01


@dataclass
class IdChanges:
    """What committing the open batch does to the seen ids."""

    entries: list[tuple[bytes, bytes | None]]  # changelog records: a new batch, expired ones
    next_batch: int  # the batch number after this commit
    new_batch: tuple[int, int] | None  # (batch, newest id timestamp) written, if any
    expired: list[int] = field(default_factory=list)  # batches forgotten


class SeenIds:
    def __init__(self, store: TaskStore):
        self.store = store
        self.pending: dict[bytes, int] = {}  # id -> timestamp, first seen in the open batch
        self.bloom = Bloom(MIN_BLOOM_CAPACITY, BLOOM_FALSE_POSITIVES)
        self.capacity = MIN_BLOOM_CAPACITY  # ids the filter holds at its false-positive rate
        self.added = 0  # ids put in the filter since it was built (committed batches)
        self.next_batch = 0
        self.batches: list[tuple[int, int]] = []  # (batch, newest id timestamp): for expiry

    def load(self) -> None:
        """Take up the store's ids (after a restore)."""
        self.next_batch = self.store.next_batch
        self.batches = list(self.store.id_batches())
        self._rebuild()

    def _rebuild(self) -> None:
        """A filter of the ids the store keeps, sized for twice as many: built at open, and
        again once as many ids were added as it was sized for. A Bloom filter cannot
        forget, so the rebuild is also what drops the ids expiry has removed; without it
        an ever-fuller filter would send most new ids to RocksDB."""
        seen = list(self.store.seen_ids())
        self.capacity = max(MIN_BLOOM_CAPACITY, 2 * len(seen))
        self.bloom = Bloom(self.capacity, BLOOM_FALSE_POSITIVES)
        self.bloom.update(seen)
        self.added = len(seen)

    def seen(self, rid: bytes) -> bool:
        return rid in self.pending or (rid in self.bloom and self.store.has_seen(rid))

    def add(self, rid: bytes, ts: int) -> None:
        """``rid`` was handled in the open batch (processed or dead-lettered)."""
        self.pending[rid] = ts
        self.bloom.add(rid)

    def changes(self, horizon: int) -> IdChanges:
        """The open batch's ids as one batch record, and tombstones for the batches whose
        newest id is older than ``horizon``."""
        entries: list[tuple[bytes, bytes | None]] = []
        next_batch = self.next_batch
        new_batch = None
        if self.pending:
            entries.append((layout.id_batch_key(next_batch), layout.encode_id_batch(self.pending)))
            new_batch = (next_batch, max(self.pending.values()))
            next_batch += 1
        expired = [b for b, ts in self.batches if ts < horizon]
        entries.extend((layout.id_batch_key(b), None) for b in expired)
        return IdChanges(entries, next_batch, new_batch, expired)

    def committed(self, changes: IdChanges) -> None:
        """``changes`` are in the store now."""
        self.next_batch = changes.next_batch
        if changes.expired:
            gone = set(changes.expired)
            self.batches = [e for e in self.batches if e[0] not in gone]
        if changes.new_batch is not None:
            self.batches.append(changes.new_batch)
        self.added += len(self.pending)
        self.pending = {}
        if self.added > self.capacity:
            self._rebuild()

    def discard(self) -> None:
        """Forget the open batch's ids (the Bloom filter keeps them: a false positive only
        costs a store lookup)."""
        self.pending = {}
