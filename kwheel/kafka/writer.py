"""Turning produced records into Kafka messages: encode once, write to every route.

A record produced to a stream goes to the stream's topic and, for every computation that
re-keys that stream, to its repartition topic with the new key, all through the same
producer (so, inside a transaction, atomically).
"""

from __future__ import annotations

from confluent_kafka import Producer

from ..errors import PipelineError, SerdeError
from ..pipeline import Pipeline, Route, Stream
from ..record import Key, Record
from ..state.layout import key_tag
from .partitioner import partition_for

ID_HEADER = "kwheel.id"
# librdkafka's default message.max.bytes: a larger record would fail at produce time,
# after the call that made it returned; refusing it here puts it under the error policy.
MAX_RECORD_BYTES = 1_000_000

# (topic, key bytes, value bytes, timestamp, record id, partition: -1 = by the key bytes)
Message = tuple[str, bytes, bytes, int, bytes, int]


class StreamWriter:
    def __init__(self, pipeline: Pipeline, streams: list[str] | None = None):
        names = list(pipeline.streams) if streams is None else streams
        self._streams: dict[str, tuple[Stream, list[Route]]] = {
            n: (pipeline.streams[n], pipeline.routes(n)) for n in names
        }
        self._placement = _placements(pipeline)

    def encode(
        self, stream: str, key: Key, value: object, timestamp: int, rid: bytes
    ) -> list[Message]:
        """Encode one record for all its routes; raise SerdeError/PipelineError on bad input."""
        try:
            s, routes = self._streams[stream]
        except KeyError:
            raise PipelineError(
                f"cannot produce to {stream!r}: not an output of this computation"
            ) from None
        try:
            kb = s.key_serde.encode(key)
        except SerdeError as e:
            raise SerdeError(f"key for stream {stream!r}: {e}") from None
        try:
            vb = s.value_serde.encode(value)
        except SerdeError as e:
            raise SerdeError(f"value for stream {stream!r}: {e}") from None
        if len(kb) + len(vb) > MAX_RECORD_BYTES:
            raise SerdeError(
                f"record for stream {stream!r} is {len(kb) + len(vb)} bytes, over the "
                f"{MAX_RECORD_BYTES}-byte limit"
            )
        place = self._placement.get(routes[0].topic)  # a re-keying stage's output (rekey.py)
        out = [
            (
                routes[0].topic,
                kb,
                vb,
                timestamp,
                rid,
                -1 if place is None else partition_for(place[0](key), place[1]),
            )
        ]
        for route in routes[1:]:
            new_key = route.key_by(Record(key, value, timestamp, rid, stream))  # type: ignore[misc]
            place = self._placement.get(route.topic)
            partition = -1 if place is None else partition_for(place[0](new_key), place[1])
            out.append((route.topic, key_tag(new_key), vb, timestamp, rid, partition))
        return out


def _placements(pipeline: Pipeline) -> dict[str, tuple[object, int]]:
    """Repartition topics whose records must land where a directly read input puts the key.

    A repartition record's Kafka key is the new key's tag (so its type survives the trip),
    and by default it lands where that tag hashes to. A computation that also reads a
    stream directly sees each key in the partition its serde's bytes hash to there, so its
    repartition records go to that partition instead: one key, one task, one state.
    Returns repartition topic -> (the direct input's key encoder, partition count)."""
    out: dict[str, tuple[object, int]] = {}
    for c in pipeline.computations.values():
        direct = [i for i in c.inputs if i.key_by is None]
        if not direct:
            continue
        serde = pipeline.streams[direct[0].stream].key_serde
        parts = pipeline.streams[direct[0].stream].partitions
        for i in c.inputs:
            if i.key_by is not None:
                out[pipeline.repartition_topic(c.name, i.stream)] = (serde.encode, parts)
    return out


def send(producer: Producer, messages: list[Message]) -> None:
    """Hand messages to librdkafka, waiting for queue space when it is full."""
    produce = producer.produce
    for topic, kb, vb, ts, rid, partition in messages:
        while True:
            try:
                produce(
                    topic, vb, kb, partition=partition, timestamp=ts, headers=[(ID_HEADER, rid)]
                )
                break
            except BufferError:
                producer.poll(0.05)
