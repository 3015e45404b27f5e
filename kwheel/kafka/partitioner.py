"""Which partition a key lands in: Kafka's murmur2, as Java clients and librdkafka's
``murmur2_random`` partitioner compute it (kwheel's producers use that partitioner)."""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash (seed 0x9747b28c), as an unsigned int."""
    h = (0x9747B28C ^ len(data)) & _MASK
    n4 = len(data) & ~3
    for i in range(0, n4, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = len(data) & 3
    if extra == 3:
        h ^= data[n4 + 2] << 16
    if extra >= 2:
        h ^= data[n4 + 1] << 8
    if extra >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition of a record with this key (a keyless record: 0 here; random in librdkafka)."""
    if key is None:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions
