"""Key layout shared by the RocksDB store and the changelog topic.

The changelog is a literal log of store writes: its record key is the store key and its
value the store value (``None`` deletes). So restoring a store is replaying the log.

    s<keytag>          per-key user state (pickled dict)
    i<batch:8>         the record ids first seen in one committed batch (dedup)
    t<len:2><keytag><tag>   one timer -> its time and domain
    w                  the task's input low watermark (kept monotonic across restarts)
    d<id>              one seen record id -> its timestamp (derived locally from ``i``)
    x<domain><time:8><len:2><keytag><tag>   timers ordered by time (derived from ``t``)
    m<name>            store metadata, never changelogged (e.g. the applied offset)
"""

from __future__ import annotations

import pickle
import struct

from ..record import Key, TimeDomain

STATE = b"s"
ID_BATCH = b"i"
SEEN = b"d"
TIMER = b"t"
TIMER_INDEX = b"x"
WATERMARK = b"w"
META = b"m"
APPLIED_OFFSET = META + b"applied"
APPLIED_AT = META + b"applied_at"
NEXT_BATCH = META + b"batch"
TIMER_COUNT = META + b"timers"  # how many timers the store holds (kept by apply)

_U64 = struct.Struct(">q")
_ID_ENTRY = struct.Struct(">Hq")  # id length, timestamp


def key_tag(key: Key) -> bytes:
    """Encode a user key so its type (str or bytes) survives a round trip."""
    if isinstance(key, str):
        return b"u" + key.encode()
    if isinstance(key, (bytes, bytearray, memoryview)):
        return b"b" + bytes(key)
    raise TypeError(f"keys must be str or bytes, got {type(key).__name__} {key!r}")


def key_from_tag(tag: bytes) -> Key:
    return tag[1:].decode() if tag[:1] == b"u" else tag[1:]


def state_key(key: Key) -> bytes:
    return STATE + key_tag(key)


def encode_state(state: dict[str, object]) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def decode_state(data: bytes) -> dict[str, object]:
    state: dict[str, object] = pickle.loads(data)  # what encode_state pickled
    return state


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(b: bytes) -> int:
    n: int = _U64.unpack(b)[0]
    return n


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


# ---- timers ---------------------------------------------------------------------------
_TIMER_VALUE = struct.Struct(">qc")  # time, domain code
# The one translation between time domains and their byte in timer values and index keys.
# Keyed by str as well: a TimeDomain member hashes and compares as its string.
_DOMAIN_CODES: dict[str, bytes] = {TimeDomain.EVENT: b"e", TimeDomain.WALL: b"w"}
_CODE_DOMAINS: dict[bytes, TimeDomain] = {
    code: TimeDomain(name) for name, code in _DOMAIN_CODES.items()
}
_LEN = struct.Struct(">H")
_BIAS = 2**63  # so negative times sort before positive ones as unsigned bytes


def timer_key(keytag: bytes, tag: str) -> bytes:
    return TIMER + _LEN.pack(len(keytag)) + keytag + tag.encode()


def split_timer_key(tkey: bytes) -> tuple[bytes, str]:
    (n,) = _LEN.unpack_from(tkey, 1)
    return tkey[3 : 3 + n], tkey[3 + n :].decode()


def is_time_domain(domain: object) -> bool:
    """``domain`` names a time domain ("event", "wall" or a TimeDomain)."""
    return type(domain) in (str, TimeDomain) and domain in _DOMAIN_CODES


def encode_timer(ts: int, domain: TimeDomain | str) -> bytes:
    return _TIMER_VALUE.pack(ts, _DOMAIN_CODES[domain])


def decode_timer(value: bytes) -> tuple[int, TimeDomain]:
    ts, code = _TIMER_VALUE.unpack(value)
    return ts, _CODE_DOMAINS[code]


def timer_index_prefix(domain: TimeDomain) -> bytes:
    """Where the index of ``domain``'s timers starts: they follow in time order."""
    return TIMER_INDEX + _DOMAIN_CODES[domain]


def timer_index_key(tkey: bytes, ts: int, domain: TimeDomain) -> bytes:
    return timer_index_prefix(domain) + (ts + _BIAS).to_bytes(8, "big") + tkey[1:]


def timer_index_key_of(tkey: bytes, value: bytes) -> bytes:
    """The index key of timer ``tkey`` whose encoded value is ``value`` (restore's path:
    no decoding into a TimeDomain and back)."""
    ts: int
    code: bytes
    ts, code = _TIMER_VALUE.unpack(value)
    return TIMER_INDEX + code + (ts + _BIAS).to_bytes(8, "big") + tkey[1:]


def split_timer_index_key(ikey: bytes) -> tuple[int, bytes]:
    """(time, timer key) of an index entry."""
    return int.from_bytes(ikey[2:10], "big") - _BIAS, TIMER + ikey[10:]
