"""One injector process: send records into source streams, then publish the low watermark
that covers them (flushed first, so the watermark never runs ahead of the records)."""

from __future__ import annotations

import logging
import os
import socket
import time

from ..config import WorkerConfig
from ..kafka.writer import StreamProducer
from ..pipeline import Pipeline
from ..record import Key
from ..watermarks import MAX_WATERMARK, MIN_WATERMARK
from ..watermarks.control import INJECTOR, Control, injector_producer_id
from ..watermarks.transport import WatermarkPublisher, read_to_end

log = logging.getLogger("kwheel.inject")


class Injector:
    """One injector process: ``send`` records, ``advance`` the watermark, ``close`` when done."""

    def __init__(
        self,
        pipeline: Pipeline,
        name: str,
        streams: list[str],
        cfg: WorkerConfig,
        instance: str | None = None,
        publish_interval_ms: int | None = 200,
    ):
        for s in streams:
            if s not in pipeline.streams:
                raise ValueError(f"injector {name!r}: unknown stream {s!r}")
        self.pipeline = pipeline
        self.streams = list(streams)
        self.producer_id = injector_producer_id(
            name, instance or f"{socket.gethostname()}-{os.getpid()}"
        )
        self.watermark = MIN_WATERMARK
        self._producer = StreamProducer(pipeline, cfg)
        self._publisher = WatermarkPublisher(cfg, pipeline.watermark_topic())
        table = read_to_end(cfg, pipeline.watermark_topic())
        # never below what this instance published before a restart
        self._floor = table.published(self.producer_id)
        if self.producer_id in table.retired:
            log.warning(
                "injector instance %s was retired (kwheel injector retire): readers ignore "
                "its watermark, and the records it sends arrive late",
                self.producer_id,
            )
        parts = pipeline.topics()
        topics = dict.fromkeys(r.topic for s in streams for r in pipeline.routes(s))
        self._partitions = [(t, p) for t in topics for p in range(parts[t][0])]
        # None: the caller publishes (e.g. only after its source can acknowledge)
        self._interval_s = None if publish_interval_ms is None else publish_interval_ms / 1000
        self._last_publish = 0.0
        self.sent = 0

    def send(
        self,
        stream: str,
        key: Key,
        value: object,
        timestamp: int | None = None,
        id: bytes | None = None,
    ) -> bytes:
        if stream not in self.streams:
            raise ValueError(
                f"injector {self.producer_id}: {stream!r} is not one of its streams {self.streams}"
            )
        rid = self._producer.send(stream, key, value, timestamp, id)
        self.sent += 1
        if (
            self._interval_s is not None
            and time.monotonic() - self._last_publish >= self._interval_s
        ):
            self.publish()
        return rid

    def advance(self, watermark: int) -> None:
        """Raise the injector watermark (a lower value is ignored: it never regresses)."""
        if watermark > self.watermark:
            self.watermark = watermark

    def publish(self, final: bool = False) -> None:
        """Flush what was sent, then publish the watermark covering it."""
        self._producer.flush()
        ends = self._publisher.end_offsets(self._partitions)
        # never below what this instance published before a restart
        w = MAX_WATERMARK if final else max(self.watermark, self._floor)
        self._publisher.publish(
            Control(
                self.producer_id,
                INJECTOR,
                self.streams,
                w,
                [(t, p, o) for (t, p), o in ends.items()],
                int(time.time() * 1000),
                final=final,
                stats={"sent": self.sent},
            )
        )
        self._publisher.flush()
        self._last_publish = time.monotonic()

    def close(self, final: bool = True) -> None:
        """Publish a last watermark; ``final`` says this injector will send nothing more."""
        self.publish(final=final)
        self._producer.close()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(final=exc[0] is None)
