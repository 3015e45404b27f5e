"""Running a declared injector: poll its source, send, publish the watermark, acknowledge."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

from ..config import WorkerConfig
from ..errors import ConfigError
from ..pipeline import Pipeline
from ..sources import SourceEnv
from .policy import BoundedDisorder
from .process import Injector

log = logging.getLogger("kwheel.inject")

PUBLISH_INTERVAL_S = 0.2


def run_injector(
    pipeline: Pipeline,
    name: str,
    cfg: WorkerConfig,
    instance: int = 0,
    instances: int = 1,
    progress: Callable[[Injector], None] | None = None,
    final: bool = True,
) -> Injector:
    """Run until the source finishes or SIGTERM/SIGINT, then publish the watermark reached.

    When the source finished and ``final`` is set, the watermark says the stream ended:
    downstream fires every timer, and anything sent to the stream later is late (and its
    ids are no longer remembered for dedup)."""
    spec = pipeline.injectors.get(name)
    if spec is None:
        known = ", ".join(pipeline.injectors) or "none"
        raise ConfigError(
            f"unknown injector {name!r} in pipeline {pipeline.name!r} (declared: {known})"
        )
    if not 0 <= instance < instances:
        raise ConfigError(f"injector instance must be in 0..{instances - 1}, got {instance}")
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    source = spec.source()
    source.open(SourceEnv(pipeline.name, name, instance, instances, cfg))
    inj = Injector(
        pipeline, name, spec.outputs, cfg, instance=str(instance), publish_interval_ms=None
    )
    policy = BoundedDisorder(spec.disorder_ms)
    default_stream = spec.outputs[0]
    finished = False
    last = time.monotonic()
    try:
        while not stop:
            batch = source.poll(1000)
            if batch is None:
                finished = True
                break
            for r in batch:
                inj.send(r.stream or default_stream, r.key, r.value, r.timestamp, r.id)
                policy.observe(r.timestamp)
            own = source.watermark()
            inj.advance(policy.watermark if own is None else own)
            if time.monotonic() - last >= PUBLISH_INTERVAL_S:
                inj.publish()
                source.committed()
                last = time.monotonic()
                if progress:
                    progress(inj)
        inj.close(final=finished and final)
        source.committed()
        if progress:
            progress(inj)
    finally:
        source.close()
    log.info(
        "injector %s: sent %d records%s",
        inj.producer_id,
        inj.sent,
        " (finished)" if finished else "",
    )
    return inj
