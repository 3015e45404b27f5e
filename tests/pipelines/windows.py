"""Pipelines with watermarks and timers for the integration tests."""

import os
import time

from kwheel import Computation, Pipeline


class Tagger(Computation):
    """Stage A: passes records on, saying whether each arrived late."""

    def process_record(self, ctx, record):
        ctx.produce("mid", ctx.key, {**record.value, "late": record.late}, record.timestamp)


class WindowCounter(Computation):
    """Stage B: per-key counts in 1-second event-time windows, emitted by a timer at the
    window's end once the low watermark passes it."""

    def process_record(self, ctx, record):
        start = record.timestamp // 1000 * 1000
        name = f"w{start}"
        ctx.state[name] = ctx.state.get(name, 0) + 1
        ctx.set_timer(name, start + 1000)

    def process_timer(self, ctx, timer):
        start = timer.timestamp - 1000
        count = ctx.state.pop(timer.tag)
        ctx.produce(
            "windows",
            ctx.key,
            {"key": ctx.key, "start": start, "count": count, "watermark": ctx.low_watermark},
            timer.timestamp,
        )


class WallPinger(Computation):
    """Sets a wall-clock timer 500 ms after the first record of each key; reports when it fired."""

    def process_record(self, ctx, record):
        if "due" not in ctx.state:
            due = int(time.time() * 1000) + 500
            ctx.state["due"] = due
            ctx.set_timer("ping", due, domain="wall")

    def process_timer(self, ctx, timer):
        ctx.produce(
            "pings",
            ctx.key,
            {
                "key": ctx.key,
                "due": timer.timestamp,
                "fired_at": int(time.time() * 1000),
                "domain": timer.domain,
            },
            timer.timestamp,
        )


def _name() -> str:
    return os.environ.get("KWHEEL_TEST_PIPELINE", "windows")


def three_stage(name: str | None = None, partitions: int = 4) -> Pipeline:
    """events (injected) -> tagger -> mid -> windows (1 s event-time window counts)."""
    p = Pipeline(name or _name())
    p.stream("events", partitions=partitions, value="json", source=True)
    p.stream("mid", partitions=partitions, value="json")
    p.stream("windows", partitions=2, value="json")
    p.computation("tagger", Tagger, inputs=["events"], outputs=["mid"])
    p.computation("counter", WindowCounter, inputs=["mid"], outputs=["windows"])
    return p


def wall_timers(name: str | None = None) -> Pipeline:
    p = Pipeline(name or _name())
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("pings", partitions=2, value="json")
    p.computation("pinger", WallPinger, inputs=["events"], outputs=["pings"])
    return p
