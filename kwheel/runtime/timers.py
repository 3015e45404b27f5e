"""The timers of one task: committed ones in the store, this batch's changes in an overlay."""

from __future__ import annotations

from itertools import islice

from ..record import TimeDomain
from ..state import layout
from ..state.store import TaskStore
from ..watermarks import MAX_WATERMARK


class TimerTable:
    def __init__(self, store: TaskStore):
        self.store = store
        self.changes: dict[bytes, bytes | None] = {}
        self.pending = store.timer_count

    def value(self, tkey: bytes) -> bytes | None:
        return self.changes[tkey] if tkey in self.changes else self.store.get(tkey)

    def apply(self, tkey: bytes, value: bytes | None) -> None:
        """Set (value) or delete (None) a timer in the open batch."""
        old = self.value(tkey)
        if old == value:
            return
        if old is None:
            self.pending += 1
        elif value is None:
            self.pending -= 1
        self.changes[tkey] = value

    def due(
        self, domain: TimeDomain, limit: int, most: int | None = None
    ) -> list[tuple[int, bytes]]:
        """(time, timer key) of timers of ``domain`` with time <= limit, in firing order; the
        first ``most`` of them if given (without reading the rest from the store)."""
        committed = ((ts, k) for ts, k in self.store.timers(domain, limit) if k not in self.changes)
        out = list(committed if most is None else islice(committed, most))
        for k, v in self.changes.items():
            if v is not None:
                ts, d = layout.decode_timer(v)
                if d == domain and ts <= limit:
                    out.append((ts, k))
        out.sort()
        return out if most is None else out[:most]

    def earliest(self, domain: TimeDomain) -> int:
        """Time of the earliest pending timer of ``domain`` (MAX_WATERMARK when none)."""
        best = MAX_WATERMARK
        for ts, k in self.store.timers(domain, MAX_WATERMARK):
            if k not in self.changes:
                best = ts
                break
        for v in self.changes.values():
            if v is not None:
                ts, d = layout.decode_timer(v)
                if d == domain and ts < best:
                    best = ts
        return best

    def reload(self) -> None:
        """Count the store's timers again (after a restore)."""
        self.changes = {}
        self.pending = self.store.timer_count

    def committed(self) -> None:
        """The batch's changes are in the store now."""
        self.changes = {}

    def discard(self) -> None:
        if self.changes:
            self.changes = {}
            self.pending = self.store.timer_count
