"""The Context handed to user code, and copy-on-write per-key state.

Everything a call does is held back until it returns: state changes stay in a private
copy and outputs in a list, so a call that raises leaves no trace in the batch.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator
from typing import Any, Literal

from ..ids import derive
from ..kafka.writer import Message, StreamWriter
from ..record import Key, TimeDomain
from ..state.layout import encode_timer, is_time_domain, timer_key
from ..watermarks import MIN_WATERMARK

_MISSING = object()


class KeyState:
    """Dict-like state of one key. Assign to change a value: in-place edits of a stored
    list or dict are not seen (as with Flink's ValueState)."""

    __slots__ = ("_data", "_owned", "changed")

    def __init__(self, data: dict[str, object]):
        self._data = data
        self._owned = False
        self.changed = False

    def _own(self) -> dict[str, object]:
        if not self._owned:
            self._data = dict(self._data)
            self._owned = True
        self.changed = True
        return self._data

    # reads are Any, as in the State protocol it implements: values are whatever user code stored
    def get(self, name: str, default: object = None) -> Any:
        return self._data.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def __setitem__(self, name: str, value: object) -> None:
        self._own()[name] = value

    def __delitem__(self, name: str) -> None:
        if name not in self._data:
            raise KeyError(name)
        del self._own()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def items(self) -> ItemsView[str, object]:
        return self._data.items()

    def pop(self, name: str, default: object = _MISSING) -> Any:
        if name in self._data:
            return self._own().pop(name)
        if default is _MISSING:
            raise KeyError(name)
        return default

    def clear(self) -> None:
        if self._data:
            self._own().clear()

    def snapshot(self) -> dict[str, object]:
        return self._data

    def release(self) -> None:
        """The task took the data: a later write copies it first."""
        self._owned = False

    def __repr__(self) -> str:
        return f"KeyState({self._data!r})"


class TaskContext:
    """One per task, re-aimed at each record or timer (no per-call allocation of a context).

    ``outputs`` collects the encoded outputs of every call of the batch until the task hands
    them to Kafka; the task truncates it back when a call fails."""

    __slots__ = (
        "key",
        "state",
        "_writer",
        "_parent_id",
        "_n",
        "outputs",
        "_default_ts",
        "low_watermark",
        "_keytag",
        "timer_ops",
    )

    def __init__(self, writer: StreamWriter):
        self._writer = writer
        self.outputs: list[Message] = []
        self.timer_ops: list[tuple[bytes, bytes | None]] = []
        self.key: Key = ""
        self._keytag = b""
        self.state: KeyState = KeyState({})
        self._parent_id = b""
        self._n = 0
        self._default_ts = 0
        #: the task's input low watermark (ms): every record older than this was processed
        self.low_watermark = MIN_WATERMARK

    def begin(
        self, key: Key, keytag: bytes, state: KeyState, parent_id: bytes, default_ts: int
    ) -> None:
        self.key = key
        self._keytag = keytag
        self.state = state
        self._parent_id = parent_id
        self._n = 0
        self._default_ts = default_ts
        if self.timer_ops:
            self.timer_ops = []

    def produce(self, stream: str, key: Key, value: object, timestamp: int | None = None) -> None:
        rid = derive(self._parent_id, self._n)
        self._n += 1
        ts = self._default_ts if timestamp is None else int(timestamp)
        self.outputs.extend(self._writer.encode(stream, key, value, ts, rid))

    def set_timer(
        self,
        tag: str,
        timestamp: int,
        domain: TimeDomain | Literal["event", "wall"] = TimeDomain.EVENT,
    ) -> None:
        """Set this key's timer ``tag`` (replacing it): an event timer fires once the low
        watermark reaches ``timestamp``, a wall timer once the clock (ms since the epoch) does."""
        if not is_time_domain(domain):
            raise ValueError(f"timer domain must be 'event' or 'wall', got {domain!r}")
        if not isinstance(tag, str):
            raise TypeError(f"timer tag must be str, got {type(tag).__name__}")
        self.timer_ops.append((timer_key(self._keytag, tag), encode_timer(int(timestamp), domain)))

    def delete_timer(self, tag: str) -> None:
        """Cancel this key's timer ``tag`` if set."""
        if not isinstance(tag, str):
            raise TypeError(f"timer tag must be str, got {type(tag).__name__}")
        self.timer_ops.append((timer_key(self._keytag, tag), None))
