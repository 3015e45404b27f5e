"""Key layout shared by the RocksDB store and the changelog topic.

The changelog is a literal log of store writes: its record key is the store key and its
value the store value (``None`` deletes). So restoring a store is replaying the log.

    s<keytag>          per-key user state (pickled dict)
    i<batch:8>         the record ids first seen in one committed batch (dedup)
    d<id>              one seen record id -> its timestamp (derived locally from ``i``)
    m<name>            store metadata, never changelogged (e.g. the applied offset)
"""

from __future__ import annotations

import pickle
import struct

from ..record import Key

STATE = b"s"
ID_BATCH = b"i"
SEEN = b"d"
META = b"m"
APPLIED_OFFSET = META + b"applied"
NEXT_BATCH = META + b"batch"

_U64 = struct.Struct(">q")
_ID_ENTRY = struct.Struct(">Hq")  # id length, timestamp


def key_tag(key: Key) -> bytes:
    """Encode a user key so its type (str or bytes) survives a round trip."""
    if isinstance(key, str):
        return b"u" + key.encode()
    return b"b" + bytes(key)


def key_from_tag(tag: bytes) -> Key:
    return tag[1:].decode() if tag[:1] == b"u" else tag[1:]


def state_key(key: Key) -> bytes:
    return STATE + key_tag(key)


def encode_state(state: dict) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def decode_state(data: bytes) -> dict:
    return pickle.loads(data)


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def id_batch_key(batch: int) -> bytes:
    return ID_BATCH + _U64.pack(batch)


def encode_id_batch(ids: dict[bytes, int]) -> bytes:
    """Pack ``{record id: timestamp}`` of one batch into one changelog value."""
    parts = []
    for rid, ts in ids.items():
        parts.append(_ID_ENTRY.pack(len(rid), ts))
        parts.append(rid)
    return b"".join(parts)


def decode_id_batch(data: bytes) -> list[tuple[bytes, int]]:
    out, pos, n = [], 0, len(data)
    while pos < n:
        ln, ts = _ID_ENTRY.unpack_from(data, pos)
        pos += _ID_ENTRY.size
        out.append((data[pos : pos + ln], ts))
        pos += ln
    return out
