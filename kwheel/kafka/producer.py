"""StreamProducer: write records into a pipeline's streams from outside (tests, injectors).

Records get ids (fresh, or the caller's for deterministic re-sends) and go to every route
of the stream, so re-keying consumers see them too. Idempotent, not transactional: a
re-sent record is dropped downstream by its id.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from .. import registry
from ..config import WorkerConfig
from ..errors import BrokerError
from ..ids import new_id
from ..pipeline import Pipeline
from ..record import Key
from . import clients
from .writer import StreamWriter, send


class StreamProducer:
    def __init__(self, pipeline: Pipeline, cfg: WorkerConfig):
        registry.configure_from(cfg)  # Avro serdes create their registry client on first use
        self._writer = StreamWriter(pipeline)
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
        self._producer = None  # let librdkafka shut down now, not at garbage collection

    def __enter__(self) -> StreamProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
