"""A two-stage keyed count: ``events`` (injected) -> ``counter`` -> ``counts``.

Each event is JSON ``{"user": ..., "action": ...}`` keyed by user. The counter keeps a
per-user count in state and emits the new count on every event.
``KWHEEL_KEYED_COUNT_NAME`` renames the pipeline (and so its topics), e.g. per test.
"""

import os

from kwheel import Computation, Pipeline


class Counter(Computation):
    def process_record(self, ctx, record):
        n = ctx.state.get("count", 0) + 1
        ctx.state["count"] = n
        ctx.produce("counts", ctx.key, {"user": ctx.key, "count": n}, record.timestamp)


def build(name: str = "keyed_count", partitions: int = 4) -> Pipeline:
    p = Pipeline(name)
    p.stream("events", partitions=partitions, value="json", source=True)
    p.stream("counts", partitions=partitions, value="json")
    p.computation("counter", Counter, inputs=["events"], outputs=["counts"])
    return p


pipeline = build(os.environ.get("KWHEEL_KEYED_COUNT_NAME", "keyed_count"))
