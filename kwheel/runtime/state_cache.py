"""Per-key state in front of RocksDB: the committed values, and the open batch's changes.

A value is kept encoded (each call decodes its own copy) unless it holds only immutable
values: then the dict itself is shared, and ``KeyState`` copies it on first write. Either
way nothing user code keeps or mutates in place can leak into another call, a replay, or
the store.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from ..errors import StateTooLargeError
from ..kafka.writer import MAX_RECORD_BYTES
from ..record import Key
from ..state import layout
from ..state.store import TaskStore

MAX_CACHED_KEYS = 200_000
# State made only of these is kept decoded between calls: no call can change it in place.
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None)})

# A key's state as held here: encoded, decoded (immutable values only), or deleted (None).
Held = bytes | dict[str, object] | None


def immutable(d: dict[str, object]) -> bool:
    for v in d.values():
        if type(v) not in _IMMUTABLE:
            return False
    return True


class StateCache:
    def __init__(self, store: TaskStore, max_keys: int = MAX_CACHED_KEYS):
        self.store = store
        self.max_keys = max_keys
        self.clean: dict[bytes, Held] = {}  # committed values, least recently used first
        self.dirty: dict[bytes, Held] = {}  # the open batch's changes

    def load(self, tag: bytes) -> dict[str, object]:
        """The key's state: this batch's, else the committed one; shared only when immutable."""
        dirty = self.dirty
        if tag in dirty:
            raw = dirty[tag]
        else:
            clean = self.clean
            if tag in clean:
                raw = clean.pop(tag)  # used: to the end, the last to be evicted
                clean[tag] = raw
            else:
                raw = self.store.get(layout.STATE + tag)
                if raw is not None:
                    d = layout.decode_state(raw)
                    if immutable(d):
                        raw = d
                clean[tag] = raw
                if len(clean) > self.max_keys:
                    self._evict()
        if raw is None:
            return {}
        if type(raw) is dict:
            return raw
        # raw is bytes: mypy narrows on `type(raw) is dict` only where it holds (a subclass
        # of dict could fail it), and isinstance would cost more on this per-record path
        return layout.decode_state(raw)  # type: ignore[arg-type]

    def stage(self, tag: bytes, key: Key, d: dict[str, object]) -> None:
        """Make ``d`` the key's state in the open batch (an empty dict deletes it).
        Raises StateTooLargeError if it would not fit in a changelog record."""
        value: Held = (d if immutable(d) else layout.encode_state(d)) if d else None
        if value is not None and state_size(tag, value) > MAX_RECORD_BYTES:
            raise StateTooLargeError(
                f"the state of key {key!r} would be {state_size(tag, value, True)} "
                f"bytes, over the {MAX_RECORD_BYTES}-byte limit of a changelog record"
            )
        self.dirty[tag] = value

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """The open batch's changes as changelog records."""
        encode = layout.encode_state
        # v is bytes or None where it is not a dict (the same narrowing as in load)
        return [
            (layout.STATE + tag, encode(v) if type(v) is dict else v)  # type: ignore[misc]
            for tag, v in self.dirty.items()
        ]

    def committed(self) -> None:
        """The open batch's changes are in the store now."""
        self.clean.update(self.dirty)
        self.dirty = {}
        if len(self.clean) > self.max_keys:
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used keys, down to seven eighths of the bound (in one
        pass: dicts keep insertion order, and a key used is moved to the end)."""
        clean = self.clean
        n = len(clean) - self.max_keys + self.max_keys // 8
        for tag in list(islice(clean, n)):
            del clean[tag]

    def discard(self) -> None:
        self.dirty = {}


def state_size(tag: bytes, value: bytes | dict[str, object], exact: bool = False) -> int:
    """A changelog record's size for one key's state. Encoded values are measured; a dict
    kept decoded (immutable values only) is estimated from above, and encoded only when
    the estimate comes near the limit, so the usual small state costs no encoding."""
    size = len(tag) + 64  # key and record overhead
    if type(value) is not dict:  # encoded: bytes
        return size + len(value)
    if not exact:
        estimate = size  # pickle: UTF-8 text takes up to 4 bytes a character
        x: Any  # dispatched on t, its exact type: mypy narrows x on type(x) is C, not on t
        for item in value.items():
            for x in item:
                t = type(x)
                if t is str:
                    estimate += 4 * len(x) + 8
                elif t is bytes:
                    estimate += len(x) + 8
                elif t is int:
                    estimate += x.bit_length() // 8 + 16
                elif t in (float, bool, type(None)):
                    estimate += 16
                else:  # a tuple key or the like: measure
                    return size + len(layout.encode_state(value))
        if estimate <= MAX_RECORD_BYTES // 2:
            return estimate
    return size + len(layout.encode_state(value))
