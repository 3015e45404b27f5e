"""Pipelines built on WindowedAggregation for the integration tests.

Each is ``events`` (injected) -> one windowed aggregation -> ``results``: per key and window
the record count and the sum of the records' ``seq``, and the watermark when it was emitted.
"""

import os

from kwheel import Pipeline, Session, Sliding, Tumbling, WindowedAggregation


class CountAndSum(WindowedAggregation):
    """Accumulator: (count, sum of seq). Subclasses choose the windows."""

    def initial(self):
        return (0, 0)

    def add(self, acc, record):
        return (acc[0] + 1, acc[1] + record.value["seq"])

    def merge(self, a, b):
        return (a[0] + b[0], a[1] + b[1])

    def emit(self, ctx, window, acc):
        ctx.produce(
            "results",
            ctx.key,
            {
                "key": ctx.key,
                "start": window.start,
                "end": window.end,
                "count": acc[0],
                "sum": acc[1],
                "watermark": ctx.low_watermark,
            },
        )


class TumblingAgg(CountAndSum):
    windows = Tumbling(1000)


class SlidingAgg(CountAndSum):
    windows = Sliding(1000, 250)


class SessionAgg(CountAndSum):
    windows = Session(200)


LATENESS_MS = 2000


class LateAgg(CountAndSum):
    """Tumbling 1 s windows that accept late records for 2 s more; records later than that
    go to the ``dropped`` stream."""

    windows = Tumbling(1000, allowed_lateness_ms=LATENESS_MS)

    def late(self, ctx, record):
        ctx.produce(
            "dropped",
            ctx.key,
            {
                "key": ctx.key,
                "seq": record.value["seq"],
                "timestamp": record.timestamp,
                "watermark": ctx.low_watermark,
            },
        )


def _name() -> str:
    return os.environ.get("KWHEEL_TEST_PIPELINE", "windowed")


def _pipeline(comp, name: str | None, dropped: bool = False) -> Pipeline:
    p = Pipeline(name or _name())
    p.stream("events", partitions=4, value="json", source=True)
    p.stream("results", partitions=2, value="json")
    outputs = ["results"]
    if dropped:
        p.stream("dropped", partitions=1, value="json")
        outputs.append("dropped")
    p.computation("agg", comp, inputs=["events"], outputs=outputs)
    return p


def tumbling(name: str | None = None) -> Pipeline:
    return _pipeline(TumblingAgg, name)


def sliding(name: str | None = None) -> Pipeline:
    return _pipeline(SlidingAgg, name)


def sessions(name: str | None = None) -> Pipeline:
    return _pipeline(SessionAgg, name)


def lateness(name: str | None = None) -> Pipeline:
    return _pipeline(LateAgg, name, dropped=True)
