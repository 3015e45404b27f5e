"""The Kafka client methods a task calls, as Protocols: confluent-kafka's ``Producer`` and
``Consumer`` fit them, and so do the test driver's in-memory ones (kwheel.testing.memory)
and the hot-path benchmark's stand-ins. Consumed messages are ``ConsumedMessage``
(kafka/clients.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, TopicPartition

#: Headers handed to ``produce``: (name, value) pairs, values bytes as kwheel writes them.
#: The list's items are Any because no narrower list type fits both producers:
#: confluent-kafka's stub takes a ``List[Tuple[str, str | bytes | None]]`` (invariant, so a
#: ``list[tuple[str, bytes]]`` is not one), the in-memory producer a ``list[tuple[str, bytes]]``.
ProducedHeaders = list[Any]


class DeliveredMessage(Protocol):
    """What a delivery callback reads of the message it is called with."""

    # None when librdkafka does not know it (confluent-kafka returns None for a negative
    # offset); set for a delivered record of an idempotent producer (acks=all)
    def offset(self) -> int | None: ...


#: ``on_delivery``: called with (error or None, the message) once the broker answered
DeliveryCallback = Callable[[KafkaError | None, DeliveredMessage], None]


class RecordProducer(Protocol):
    """Producing records (``kafka.writer.send``)."""

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        /,
        *,
        partition: int = ...,
        on_delivery: DeliveryCallback | None = ...,
        timestamp: int = ...,
        headers: ProducedHeaders | None = ...,
    ) -> None: ...

    def poll(self, timeout: float, /) -> int: ...

    def flush(self, timeout: float, /) -> int: ...


class TransactionalProducer(RecordProducer, Protocol):
    """A task's producer (runtime/transactions.py): one transaction at a time."""

    def init_transactions(self, timeout: float, /) -> None: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: object, timeout: float, /
    ) -> None: ...

    def commit_transaction(self, timeout: float, /) -> None: ...

    def abort_transaction(self, timeout: float, /) -> None: ...


class GroupConsumer(Protocol):
    """A task's consumer (its group's member): the group metadata a transaction commits
    the input offsets for, and rewinds after an abort."""

    def consumer_group_metadata(self) -> object: ...

    def seek(self, partition: TopicPartition, /) -> None: ...
