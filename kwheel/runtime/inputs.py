"""How a task reads its input topics: keys decoded once, record ids taken or derived."""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b
from typing import cast

from .. import ids
from ..kafka.clients import ConsumedMessage
from ..kafka.writer import ID_HEADER
from ..pipeline import TaskInput
from ..record import Key
from ..state import layout

MAX_DECODED_KEYS = 100_000  # raw input keys -> (key, tag), per input
MAX_ID_BYTES = 64  # longer foreign ids are hashed down


class InputReader:
    """How to read one input topic of the task."""

    __slots__ = ("topic", "stream", "decode_key", "decode_value", "keys", "dedup")

    def __init__(self, ti: TaskInput):
        self.topic = ti.topic
        self.stream = ti.stream.name
        # A serde decodes to any object: declared a Key, as key() hands it to key_tag first,
        # which raises TypeError for one not str or bytes (the record fails, under the
        # error policy)
        self.decode_key: Callable[[bytes], Key] = (
            layout.key_from_tag
            if ti.repartitioned
            else cast("Callable[[bytes], Key]", ti.stream.key_serde.decode)
        )
        self.decode_value = ti.stream.value_serde.decode
        self.keys: dict[bytes, tuple[Key, bytes]] = {}  # raw key -> (key, tag): decoded once
        # Only records from outside can arrive twice (an injector's retry, a re-sent file).
        # Streams the pipeline writes itself, repartition topics included, are written in
        # transactions and read read_committed: they carry each record once, so they skip
        # the seen-id bookkeeping.
        self.dedup = ti.stream.source and not ti.repartitioned

    def key(self, raw: bytes) -> tuple[Key, bytes]:
        """The record key and its store tag."""
        hit = self.keys.get(raw)
        if hit is None:
            key = self.decode_key(raw)
            hit = (key, layout.key_tag(key))
            if len(self.keys) >= MAX_DECODED_KEYS:
                self.keys.clear()
            self.keys[raw] = hit
        return hit


def record_id(m: ConsumedMessage) -> bytes:
    """The record's id header, else an id derived from its log position."""
    headers = m.headers()
    if headers:
        for name, value in headers:
            if name == ID_HEADER and value:
                return (
                    value
                    if len(value) <= MAX_ID_BYTES
                    else blake2b(value, digest_size=ids.ID_BYTES).digest()
                )
    return ids.from_position(m.topic(), m.partition(), m.offset())
