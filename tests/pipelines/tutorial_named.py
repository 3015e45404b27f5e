"""The tutorial's pipeline (examples/tutorial.py) under the test's own name, so its topics
are fresh: an injector, four streams, two computations, a re-keying and a dead-letter stream."""

import os

from examples.tutorial import PerMinute, PerUser, read_views
from kwheel import Pipeline


def tutorial(name: str | None = None) -> Pipeline:
    p = Pipeline(name or os.environ.get("KWHEEL_TEST_PIPELINE", "tutorial"))
    p.stream("views", partitions=4)
    p.stream("visits", partitions=4)
    p.stream("page_minutes", partitions=1)
    p.stream("rejected", partitions=1, value="bytes")
    p.injector("views", read_views, outputs=["views"], disorder_ms=5_000)
    p.computation("per_user", PerUser, inputs=["views"], outputs=["visits"], dead_letter="rejected")
    p.computation("per_minute", PerMinute, inputs=["visits"], outputs=["page_minutes"])
    return p
