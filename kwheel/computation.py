"""The user-facing processing interface: a Computation and the Context it is handed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

from .record import TimeDomain

if TYPE_CHECKING:
    from .record import Key, Record, Timer

_T = TypeVar("_T")


class State(Protocol):
    """Per-key persistent state of one computation: a small mapping of names to values.

    A value is whatever the computation stored under its name (any picklable object), so
    reads are typed ``Any``, as ``pickle.loads`` is: annotate what you read, e.g.
    ``n: int = ctx.state.get("n", 0)``. ``get`` without a default may return None."""

    @overload
    def get(self, name: str) -> Any | None: ...

    @overload
    def get(self, name: str, default: _T) -> Any | _T: ...

    def __getitem__(self, name: str) -> Any: ...

    def __setitem__(self, name: str, value: object) -> None: ...

    def __delitem__(self, name: str) -> None: ...

    def __contains__(self, name: str) -> bool: ...

    def clear(self) -> None: ...


class Context(Protocol):
    """What ``process_record`` / ``process_timer`` may touch: only the current key's world."""

    key: Key

    @property
    def state(self) -> State:
        """The current key's persistent state."""

    def produce(self, stream: str, key: Key, value: object, timestamp: int | None = None) -> None:
        """Emit a record; it becomes visible downstream only when this batch commits."""

    def set_timer(
        self,
        tag: str,
        timestamp: int,
        domain: TimeDomain | Literal["event", "wall"] = TimeDomain.EVENT,
    ) -> None:
        """Set (or replace) this key's timer ``tag``."""

    def delete_timer(self, tag: str) -> None:
        """Cancel this key's timer ``tag`` if it is set."""

    @property
    def low_watermark(self) -> int:
        """The task's low watermark (ms): no pending record older than this is expected."""


class Computation:
    """Subclass and override ``process_record`` (and ``process_timer`` for timers).

    One instance serves many keys, one call at a time per task: keep per-key data in
    ``ctx.state``, never on ``self``, so it survives crashes and rebalances.
    """

    def setup(self) -> None:
        """Called once per task before the first record (open clients, load models)."""

    def process_record(self, ctx: Context, record: Record) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement process_record")

    def process_timer(self, ctx: Context, timer: Timer) -> None:
        """Called when a timer set through ``ctx.set_timer`` fires."""
