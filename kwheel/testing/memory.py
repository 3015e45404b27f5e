"""An in-memory stand-in for the Kafka a Task talks to: the test driver's transport.

A ``Task`` (kwheel/runtime/task.py) needs a transactional producer, a consumer for its
group metadata and rewinds, and messages to process. These classes offer exactly the
methods it calls, over a log held in memory, so the driver runs the worker's real
processing code without a broker. The log holds committed records only: what a
read_committed consumer sees. It is a transport, not a Kafka emulator: no fetching,
rebalancing, retention or compaction.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, TopicPartition

from ..errors import KwheelError
from ..kafka.partitioner import partition_for

Headers = list[tuple[str, bytes]]
#: called once a produced record is committed: (error, the record), as confluent-kafka does
DeliveryCallback = Callable[[KafkaError | None, "MemoryMessage"], object]
# a produced record until its transaction commits:
# (topic, partition, key, value, timestamp, headers, on_delivery)
_Pending = tuple[str, int, bytes | None, bytes | None, int, Headers | None, DeliveryCallback | None]


class MemoryMessage:
    """One committed record, with confluent-kafka's ``Message`` accessors."""

    __slots__ = (
        "_topic",
        "_partition",
        "_offset",
        "_key",
        "_value",
        "_timestamp",
        "_headers",
        "seq",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp: int,
        headers: list[tuple[str, bytes]] | None,
        seq: int,
    ):
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._timestamp = timestamp
        self._headers = headers
        self.seq = seq  # position in the order records were committed, over all topics

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._timestamp

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def error(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryMessage({self._topic}[{self._partition}]@{self._offset} key={self._key!r} value={self._value!r})"


class MemoryLog:
    """Topics as lists of committed records, partitioned like Kafka (murmur2 of the key)."""

    def __init__(self, topics: dict[str, int]):
        self.partitions = dict(topics)  # topic -> partition count
        self._logs: dict[tuple[str, int], list[MemoryMessage]] = {}
        self._by_topic: dict[str, list[MemoryMessage]] = {t: [] for t in topics}
        self.group_offsets: dict[
            tuple[str, str, int], int
        ] = {}  # (group, topic, partition) -> next offset
        self.epochs: dict[
            str, int
        ] = {}  # transactional id -> epoch of its latest init_transactions
        self._seq = 0

    def _count(self, topic: str) -> int:
        try:
            return self.partitions[topic]
        except KeyError:
            raise KwheelError(
                f"unknown topic {topic!r} (the pipeline declares {len(self.partitions)} topics)"
            ) from None

    def append(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        timestamp: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> MemoryMessage:
        n = self._count(topic)
        p = partition_for(key, n) if partition is None or partition < 0 else partition
        if p >= n:
            raise KwheelError(f"topic {topic!r} has {n} partitions, no partition {p}")
        log = self._logs.setdefault((topic, p), [])
        m = MemoryMessage(topic, p, len(log), key, value, timestamp, headers, self._seq)
        self._seq += 1
        log.append(m)
        self._by_topic[topic].append(m)
        return m

    def read(self, topic: str, partition: int, start: int) -> list[MemoryMessage]:
        return self._logs.get((topic, partition), [])[start:]

    def end(self, topic: str, partition: int) -> int:
        return len(self._logs.get((topic, partition), []))

    def messages(self, topic: str) -> list[MemoryMessage]:
        """Every record of ``topic``, in commit order."""
        self._count(topic)
        return list(self._by_topic[topic])


def _state_error(what: str) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._STATE, what))


class MemoryProducer:
    """A transactional producer over a MemoryLog: records become visible on commit."""

    def __init__(self, log: MemoryLog, transactional_id: str, clock: Callable[[], int] = lambda: 0):
        self.log = log
        self.transactional_id = transactional_id
        self._clock = clock
        self._in_txn = False
        self._records: list[_Pending] = []
        self._offsets: list[tuple[str, str, int, int]] = []
        self.commits = 0
        self.aborts = 0
        self._epoch: int | None = None  # None until init_transactions: never fenced

    def init_transactions(self, timeout: float | None = None) -> None:
        """Take the transactional id, fencing whoever held it before (as Kafka bumps the epoch)."""
        self._epoch = self.log.epochs[self.transactional_id] = (
            self.log.epochs.get(self.transactional_id, 0) + 1
        )
        self._reset()

    def _check_fenced(self) -> None:
        if self._epoch is not None and self.log.epochs[self.transactional_id] != self._epoch:
            self._reset()
            raise KafkaException(
                KafkaError(
                    KafkaError._FENCED, f"{self.transactional_id}: fenced by a newer producer"
                )
            )

    def begin_transaction(self) -> None:
        self._check_fenced()
        if self._in_txn:
            raise _state_error(f"{self.transactional_id}: a transaction is already open")
        self._in_txn = True

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: DeliveryCallback | None = None,
        timestamp: int = 0,
        headers: Headers | None = None,
    ) -> None:
        if not self._in_txn:
            raise _state_error(
                f"{self.transactional_id}: produce to {topic!r} outside a transaction"
            )
        self.log._count(topic)
        self._records.append(
            (topic, partition, key, value, timestamp or self._clock(), headers, on_delivery)
        )

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], group_metadata: object, timeout: float | None = None
    ) -> None:
        if not self._in_txn:
            raise _state_error(f"{self.transactional_id}: offsets sent outside a transaction")
        self._offsets.extend(
            (str(group_metadata), tp.topic, tp.partition, tp.offset) for tp in offsets
        )

    def commit_transaction(self, timeout: float | None = None) -> None:
        self._check_fenced()
        if not self._in_txn:
            raise _state_error(f"{self.transactional_id}: no transaction to commit")
        for topic, partition, key, value, ts, headers, on_delivery in self._records:
            m = self.log.append(topic, partition, key, value, ts, headers)
            if on_delivery is not None:
                on_delivery(None, m)
        for group, topic, partition, offset in self._offsets:
            self.log.group_offsets[(group, topic, partition)] = offset
        self.commits += 1
        self._reset()

    def abort_transaction(self, timeout: float | None = None) -> None:
        self.aborts += 1
        self._reset()

    def _reset(self) -> None:
        self._records = []
        self._offsets = []
        self._in_txn = False

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def poll(self, timeout: float | None = None) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class MemoryConsumer:
    """A computation's consumer as a Task sees it: group metadata and rewinds (``seek``)."""

    def __init__(self, group: str):
        self.group = group
        self.positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to read

    def consumer_group_metadata(self) -> str:
        return self.group

    def seek(self, tp: TopicPartition) -> None:
        self.positions[(tp.topic, tp.partition)] = tp.offset
