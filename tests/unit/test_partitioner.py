"""Keys land on the partitions Kafka's Java clients (and librdkafka's murmur2) pick."""

import pytest

from kwheel.kafka.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    "data, java",
    [  # Kafka's UtilsTest.testMurmur2 (signed ints)
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data, java):
    assert murmur2(data) == java & 0xFFFFFFFF


def test_partition_is_the_positive_hash_modulo_the_count():
    assert partition_for(b"foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7
    assert partition_for(None, 7) == 0
