"""A counter that logs from user code, to check the log context of worker log lines."""

import logging

from kwheel import Pipeline
from tests.pipelines.counting import Counter, _name

log = logging.getLogger("tests.logged")


class LoggingCounter(Counter):
    def process_record(self, ctx, record):
        if record.value["seq"] % 50 == 0:
            log.info("counting seq %d of %s", record.value["seq"], ctx.key)
        super().process_record(ctx, record)


def logged_count(name: str | None = None) -> Pipeline:
    p = Pipeline(name or _name())
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("counts", partitions=2, value="json")
    p.computation("counter", LoggingCounter, inputs=["events"], outputs=["counts"])
    return p
