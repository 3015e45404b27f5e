"""Retiring an injector instance that will not come back (``kwheel injector retire``).

A stream's watermark is the min over every injector instance that ever published for it,
so a dead instance (a machine gone, a run scaled from 3 instances to 2, the host-pid id
of an ``Injector`` in your own code) holds it back for good. Retiring it publishes, on its
behalf, a final control with a key of its own (``retired:<producer>``): readers count the
instance as finished once they have read past the end offsets the retirement names (the
streams' ends now, so past whatever it sent), and ignore every control it publishes later.
A retired instance that comes back, or its zombie, cannot take the watermark back: its
controls are dropped and, as for an injector run again after it finished, its records
arrive late downstream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..config import WorkerConfig
from ..errors import BrokerError, KwheelError
from ..pipeline import Pipeline
from ..watermarks import MAX_WATERMARK
from ..watermarks.control import INJECTOR, Control, injector_producer_id
from ..watermarks.transport import WatermarkPublisher, read_to_end

log = logging.getLogger("kwheel.inject")

# An instance that published more recently than this looks alive: retiring it needs --force
# (a running injector publishes at least every second: kwheel/injector/run.py).
ALIVE_WITHIN_S = 10.0


@dataclass(frozen=True)
class Retirement:
    producer: str  # injector:<name>/<instance>
    streams: list[str]
    watermark: int  # the instance's last watermark: what it held its streams at
    done: str  # "retired", "already retired" or "already finished"


def retire(
    pipeline: Pipeline, name: str, instance: str, cfg: WorkerConfig, force: bool = False
) -> Retirement:
    """Declare ``injector:<name>/<instance>`` finished for good (see the module's doc)."""
    pid = injector_producer_id(name, instance)
    topic = pipeline.watermark_topic()
    table = read_to_end(cfg, topic)
    latest = table.latest(pid)
    if latest is None or latest.kind != INJECTOR:
        known = sorted(p for p, h in table.entries.items() if h and h[-1].kind == INJECTOR)
        raise KwheelError(
            f"pipeline {pipeline.name!r}: injector instance {pid!r} never published a watermark "
            f"on {topic} (instances that did: {', '.join(known) or 'none'})"
        )
    last = table.published(pid)
    if pid in table.retired:
        return Retirement(pid, latest.streams, last, "already retired")
    if latest.final:
        return Retirement(pid, latest.streams, last, "already finished")
    age_s = time.time() - latest.wall_time / 1000
    if age_s < ALIVE_WITHIN_S and not force:
        raise KwheelError(
            f"injector instance {pid!r} published {max(age_s, 0):.1f}s ago and may be alive: "
            f"stop it first, or pass --force (what it sends after the retirement arrives late)"
        )
    streams = [s for s in latest.streams if s in pipeline.streams]
    parts = pipeline.topics()
    topics = dict.fromkeys(r.topic for s in streams for r in pipeline.routes(s))
    publisher = WatermarkPublisher(cfg, topic)
    ends = publisher.end_offsets([(t, p) for t in topics for p in range(parts[t][0])])
    publisher.publish(
        Control(
            pid,
            INJECTOR,
            list(latest.streams),
            MAX_WATERMARK,
            [(t, p, o) for (t, p), o in ends.items()],
            int(time.time() * 1000),
            final=True,
            stats=dict(latest.stats),
            retired=True,
        )
    )
    if publisher.flush(cfg.startup_timeout_s):
        raise BrokerError(
            f"could not publish the retirement of {pid!r} on {topic} within "
            f"startup_timeout_s={cfg.startup_timeout_s:g}"
        )
    log.info("retired %s (its watermark was %d)", pid, last)
    return Retirement(pid, latest.streams, last, "retired")
