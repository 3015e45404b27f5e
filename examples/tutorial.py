"""The pipeline of docs/tutorial.md: page views, counted per user, then per page and minute.

    views (injected from a JSON-lines file)
      -> per_user    per-user state: how many pages the user has viewed; re-keys by page
      -> visits
      -> per_minute  per page and one-minute event-time window: views and first-time visitors
      -> page_minutes

An input line looks like ``{"user": "ann", "page": "/home", "ts": 1735689600000}`` (``ts``
in ms since the epoch). A line without ``"page"`` makes ``per_user`` raise; the record then
goes to the dead-letter stream ``rejected`` and processing goes on.

The injector reads the file named by the environment variable ``TUTORIAL_VIEWS``
(default ``views.jsonl``, relative to the directory ``kwheel inject`` runs in).
"""

import os

from kwheel import Computation, Pipeline, Tumbling, WindowedAggregation
from kwheel.sources import JsonLines


class PerUser(Computation):
    """Keyed by user. State: the number of views of this user so far."""

    def process_record(self, ctx, record):
        page = record.value["page"]  # KeyError for a line without "page": dead-lettered
        n = ctx.state.get("views", 0) + 1
        ctx.state["views"] = n
        # The output is keyed by page, so the next stage sees all views of a page in one task.
        ctx.produce("visits", page, {"page": page, "user": ctx.key, "first": n == 1})


class PerMinute(WindowedAggregation):
    """Keyed by page. Per page and minute the accumulator is [views, first-time visitors]."""

    windows = Tumbling(60_000)

    def initial(self):
        return [0, 0]

    def add(self, acc, record):
        return [acc[0] + 1, acc[1] + (1 if record.value["first"] else 0)]

    def emit(self, ctx, window, acc):
        ctx.produce(
            "page_minutes",
            ctx.key,
            {"page": ctx.key, "minute": window.start, "views": acc[0], "new_visitors": acc[1]},
        )


def read_views():
    return JsonLines(
        os.environ.get("TUTORIAL_VIEWS", "views.jsonl"),
        key=lambda v: v["user"],
        timestamp=lambda v: v["ts"],
    )


pipeline = Pipeline("tutorial")
pipeline.stream("views", partitions=4)
pipeline.stream("visits", partitions=4)
pipeline.stream("page_minutes", partitions=1)
pipeline.stream("rejected", partitions=1, value="bytes")
pipeline.injector("views", read_views, outputs=["views"], disorder_ms=5_000)
pipeline.computation(
    "per_user", PerUser, inputs=["views"], outputs=["visits"], dead_letter="rejected"
)
pipeline.computation("per_minute", PerMinute, inputs=["visits"], outputs=["page_minutes"])
