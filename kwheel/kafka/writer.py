"""Writing records into a pipeline's streams: encode once, write to every route.

A record produced to a stream goes to the stream's topic and, for every computation that
re-keys that stream, to its repartition topic with the new key, all through the same
producer (so, inside a transaction, atomically). Tasks write through their transactional
producer (``StreamWriter`` and ``send``); writers from outside (injectors, tests) through a
``StreamProducer``, which gives records ids (fresh, or the caller's for deterministic
re-sends) and is idempotent, not transactional: a re-sent record is dropped downstream by
its id.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Producer

from .. import registry
from ..config import WorkerConfig
from ..errors import BrokerError, PipelineError, SerdeError
from ..ids import new_id
from ..pipeline import Pipeline, Route, Stream
from ..record import Key, Record
from ..state.layout import key_tag
from . import clients
from .partitioner import partition_for
from .protocols import RecordProducer

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
            # routes after the first are repartitions, whose key_by is set (Pipeline.routes);
            # a check per record would be a cost for nothing
            new_key = route.key_by(Record(key, value, timestamp, rid, stream))  # type: ignore[misc]
            place = self._placement.get(route.topic)
            partition = -1 if place is None else partition_for(place[0](new_key), place[1])
            out.append((route.topic, key_tag(new_key), vb, timestamp, rid, partition))
        return out


def _placements(pipeline: Pipeline) -> dict[str, tuple[Callable[[object], bytes], int]]:
    """Repartition topics whose records must land where a directly read input puts the key.

    A repartition record's Kafka key is the new key's tag (so its type survives the trip),
    and by default it lands where that tag hashes to. A computation that also reads a
    stream directly sees each key in the partition its serde's bytes hash to there, so its
    repartition records go to that partition instead: one key, one task, one state.
    Returns repartition topic -> (the direct input's key encoder, partition count)."""
    out: dict[str, tuple[Callable[[object], bytes], int]] = {}
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


def send(producer: RecordProducer, messages: list[Message]) -> None:
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


class StreamProducer:
    def __init__(self, pipeline: Pipeline, cfg: WorkerConfig):
        # Avro serdes declared with registry=True use the configured registry (kwheel.registry)
        self._writer = StreamWriter(
            registry.bind(pipeline, registry.SchemaRegistry.from_config(cfg))
        )
        self._errors: list[str] = []
        conf = clients.producer_config(cfg)
        conf["error_cb"] = lambda err: self._errors.append(err.str())
        self._producer = Producer(conf)

    def send(
        self,
        stream: str,
        key: Key,
        value: object,
        timestamp: int | None = None,
        id: bytes | None = None,
    ) -> bytes:
        rid = id or new_id()
        ts = int(time.time() * 1000) if timestamp is None else int(timestamp)
        send(self._producer, self._writer.encode(stream, key, value, ts, rid))
        return rid

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            raise BrokerError(
                f"{left} records not delivered within {timeout_s:g}s ({'; '.join(self._errors[-3:])})"
            )

    def close(self) -> None:
        self.flush()
        del self._producer  # let librdkafka shut down now, not at garbage collection

    def __enter__(self) -> StreamProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
