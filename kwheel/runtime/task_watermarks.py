"""A task's watermarks: the input low watermark it processes at, and the one it publishes.

The input watermark is committed with each batch (with the sequence number of the last
timer fired, which makes timer record ids unique) and never goes below what was committed:
an aborted batch puts it back to the committed value, since it may have been raised from
positions that include the batch's records. The output watermark is
min(input watermark, earliest pending event timer), never lower than before.
"""

from __future__ import annotations

import struct

from ..state import layout
from ..state.store import TaskStore
from ..watermarks import MIN_WATERMARK
from .context import TaskContext

_VALUE = struct.Struct(">qq")  # input watermark, timer fire sequence


class TaskWatermarks:
    def __init__(self, store: TaskStore, ctx: TaskContext):
        self.store = store
        self.ctx = ctx  # user code reads the input watermark as ctx.low_watermark
        self.input = MIN_WATERMARK
        self.output = MIN_WATERMARK
        self.fire_seq = 0
        self.dirty = False  # moved since the last commit: the batch records it

    def committed(self) -> tuple[int, int]:
        """(input watermark, timer fire sequence) as last committed."""
        raw = self.store.get(layout.WATERMARK)
        return _VALUE.unpack(raw) if raw is not None else (MIN_WATERMARK, 0)

    def reset(self) -> None:
        """Back to the committed values (on start, and when a batch is discarded)."""
        self._set(*self.committed())
        self.dirty = False

    def _set(self, watermark: int, fire_seq: int | None = None) -> None:
        self.input = watermark
        self.ctx.low_watermark = watermark
        if fire_seq is not None:
            self.fire_seq = fire_seq

    def advance(self, upstream: int) -> None:
        """Raise the input watermark (never lower it)."""
        if upstream > self.input:
            self._set(upstream)
            self.dirty = True

    def hold(self, ts: int) -> None:
        """Keep the input watermark at ``ts``, where due timers are still waiting to fire
        (never below the committed one)."""
        held = max(ts, self.committed()[0])
        if held < self.input:
            self._set(held)

    def next_fire(self) -> int:
        """The sequence number of a timer firing now."""
        self.fire_seq += 1
        self.dirty = True
        return self.fire_seq

    def change(self) -> tuple[bytes, bytes] | None:
        """The changelog record of the batch's watermark, if it moved."""
        return (layout.WATERMARK, _VALUE.pack(self.input, self.fire_seq)) if self.dirty else None

    def output_at(self, earliest_event_timer: int) -> int:
        """min(input watermark, earliest pending event timer), never lower than before."""
        w = min(self.input, earliest_event_timer)
        if w > self.output:
            self.output = w
        return self.output
