"""The Context handed to user code, and copy-on-write per-key state.

Everything a call does is held back until it returns: state changes stay in a private
copy and outputs in a list, so a call that raises leaves no trace in the batch.
"""

from __future__ import annotations

from ..ids import derive
from ..kafka.writer import Message, StreamWriter
from ..record import Key

_MISSING = object()


class KeyState:
    """Dict-like state of one key. Assign to change a value: in-place edits of a stored
    list or dict are not seen (as with Flink's ValueState)."""

    __slots__ = ("_data", "_owned", "changed")

    def __init__(self, data: dict):
        self._data = data
        self._owned = False
        self.changed = False

    def _own(self) -> dict:
        if not self._owned:
            self._data = dict(self._data)
            self._owned = True
        self.changed = True
        return self._data

    def get(self, name: str, default: object = None) -> object:
        return self._data.get(name, default)

    def __getitem__(self, name: str) -> object:
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

    def __iter__(self):
        return iter(self._data)

    def items(self):
        return self._data.items()

    def pop(self, name: str, default: object = _MISSING) -> object:
        if name in self._data:
            return self._own().pop(name)
        if default is _MISSING:
            raise KeyError(name)
        return default

    def clear(self) -> None:
        if self._data:
            self._own().clear()

    def snapshot(self) -> dict:
        return self._data

    def __repr__(self) -> str:
        return f"KeyState({self._data!r})"


class TaskContext:
    """One per task, re-aimed at each record or timer (no per-call allocation of a context)."""

    __slots__ = ("key", "state", "_writer", "_parent_id", "_n", "outputs", "_default_ts", "_low_watermark", "_timers")

    def __init__(self, writer: StreamWriter):
        self._writer = writer
        self.outputs: list[Message] = []
        self.key: Key = ""
        self.state: KeyState = KeyState({})
        self._parent_id = b""
        self._n = 0
        self._default_ts = 0
        self._low_watermark = -(2**63)
        self._timers = None

    def begin(self, key: Key, state: KeyState, parent_id: bytes, default_ts: int) -> None:
        self.key = key
        self.state = state
        self._parent_id = parent_id
        self._n = 0
        self._default_ts = default_ts
        self.outputs = []

    def produce(self, stream: str, key: Key, value: object, timestamp: int | None = None) -> None:
        rid = derive(self._parent_id, self._n)
        self._n += 1
        ts = self._default_ts if timestamp is None else int(timestamp)
        self.outputs.extend(self._writer.encode(stream, key, value, ts, rid))

    @property
    def low_watermark(self) -> int:
        return self._low_watermark

    def set_timer(self, tag: str, timestamp: int, domain: str = "event") -> None:
        raise NotImplementedError("timers arrive with the watermark work (issue 3)")

    def delete_timer(self, tag: str) -> None:
        raise NotImplementedError("timers arrive with the watermark work (issue 3)")
