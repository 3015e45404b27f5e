"""Record ids: unique per record, and deterministic when derived, so replays dedup."""

from __future__ import annotations

import os
from hashlib import blake2b

ID_BYTES = 16


def new_id() -> bytes:
    """A fresh random id, for records that enter the pipeline."""
    return os.urandom(ID_BYTES)


def derive(parent: bytes, n: int) -> bytes:
    """The id of the ``n``-th record produced while processing ``parent``."""
    return blake2b(parent + n.to_bytes(4, "big"), digest_size=ID_BYTES).digest()


def from_position(topic: str, partition: int, offset: int) -> bytes:
    """Id of a record written without one (a non-kwheel producer): its log position."""
    return blake2b(f"{topic}/{partition}/{offset}".encode(), digest_size=ID_BYTES).digest()
