"""Which librdkafka errors mean "another process took over", read from error codes.

A transactional producer is fenced with ``PRODUCER_FENCED`` / ``INVALID_PRODUCER_EPOCH``
(or librdkafka's own ``_FENCED``); after that every call fails with ``_FATAL``, which for
a transactional producer is, in practice, the fencing. A consumer's only fatal error is
its static member being fenced by another member with the same ``group.instance.id``
(librdkafka PR 2635): confluent-kafka reports it as ``_FATAL`` without the broker's code
(confluent-kafka-python issue 869), so the code is all there is to go on.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

_FENCED = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.FENCED_INSTANCE_ID,
    }
)


def is_fenced(err: KafkaError) -> bool:
    """The error says this client was fenced by a newer one."""
    return err.code() in _FENCED


def is_fatal(err: KafkaError) -> bool:
    """librdkafka's "fatal error" code: the client cannot go on. For a transactional
    producer or a static consumer member, being fenced is the cause in practice (see the
    module docstring)."""
    return err.code() == KafkaError._FATAL
