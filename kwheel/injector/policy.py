"""The watermark policy of declared injectors whose source has no watermark of its own."""

from __future__ import annotations

from ..watermarks import MIN_WATERMARK


class BoundedDisorder:
    """Watermark policy: records arrive out of order by at most ``bound_ms``, so the
    watermark trails the largest timestamp seen by that much."""

    def __init__(self, bound_ms: int):
        if not isinstance(bound_ms, int) or bound_ms < 0:
            raise ValueError(
                f"BoundedDisorder: bound_ms must be a non-negative integer, got {bound_ms!r}"
            )
        self.bound_ms = bound_ms
        self.max_seen = MIN_WATERMARK

    def observe(self, timestamp: int) -> int:
        if timestamp > self.max_seen:
            self.max_seen = timestamp
        return self.watermark

    @property
    def watermark(self) -> int:
        return MIN_WATERMARK if self.max_seen == MIN_WATERMARK else self.max_seen - self.bound_ms
