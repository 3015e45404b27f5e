"""Pipelines the benchmarks run. A worker loads them as ``benchmarks.pipelines:NAME``; the
pipeline name (so every run gets fresh topics, groups and changelogs) and the input topic
come from the environment:

- ``KWHEEL_BENCH_PIPELINE``: the pipeline name.
- ``KWHEEL_BENCH_INPUT``: the topic of the ``events`` source stream (default
  ``<name>.events``), so several pipelines can read the same pre-loaded data.
- ``KWHEEL_BENCH_STAGES``: how many stages ``chain`` has (default 3).
"""

from __future__ import annotations

import os

from kwheel import Computation, Pipeline

PARTITIONS = 4


class Counter(Computation):
    """The stateful keyed count of the README: one state read, one write, one output."""

    def process_record(self, ctx, record):
        n = ctx.state.get("count", 0) + 1
        ctx.state["count"] = n
        ctx.produce("counts", ctx.key, {"key": ctx.key, "count": n}, record.timestamp)


class Relay(Computation):
    """A pass-through stage that also keeps a per-key count: forwards the input value as it
    is (it carries the send time the latency reader needs) to the stage's output stream."""

    def __init__(self, output: str):
        self.output = output

    def process_record(self, ctx, record):
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        ctx.produce(self.output, ctx.key, record.value, record.timestamp)


def _name(default: str) -> str:
    return os.environ.get("KWHEEL_BENCH_PIPELINE", default)


def keyed_count(name: str | None = None, input_topic: str | None = None) -> Pipeline:
    """events (source) -> counter -> counts, 4 partitions."""
    p = Pipeline(name or _name("bench-count"))
    p.stream(
        "events",
        partitions=PARTITIONS,
        value="json",
        source=True,
        topic=input_topic or os.environ.get("KWHEEL_BENCH_INPUT") or None,
    )
    p.stream("counts", partitions=PARTITIONS, value="json")
    p.computation("counter", Counter, inputs=["events"], outputs=["counts"])
    return p


def chain(name: str | None = None, stages: int | None = None) -> Pipeline:
    """events (source) -> stage1 -> out1 -> stage2 -> out2 -> ... -> out<stages>."""
    n = stages or int(os.environ.get("KWHEEL_BENCH_STAGES", "3"))
    p = Pipeline(name or _name("bench-chain"))
    p.stream("events", partitions=PARTITIONS, value="json", source=True)
    previous = "events"
    for i in range(1, n + 1):
        out = f"out{i}"
        p.stream(out, partitions=PARTITIONS, value="json")
        p.computation(f"stage{i}", lambda out=out: Relay(out), inputs=[previous], outputs=[out])
        previous = out
    return p


def wide_count(name: str | None = None) -> Pipeline:
    """The keyed count over ``KWHEEL_BENCH_PARTITIONS`` partitions (default 32)."""
    n = int(os.environ.get("KWHEEL_BENCH_PARTITIONS", "32"))
    p = Pipeline(name or _name("bench-wide"))
    p.stream("events", partitions=n, value="json", source=True)
    p.stream("counts", partitions=n, value="json")
    p.computation("counter", Counter, inputs=["events"], outputs=["counts"])
    return p
