"""A two-stage event-time pipeline for tests/integration/test_event_time_faults.py.

``events`` (injected) -> ``relay`` (pass-through) -> ``relayed`` -> ``win`` (1 s tumbling
windows: count and sum of ``seq`` per key) -> ``windows``. ``win`` sleeps
KWHEEL_TEST_WIN_SLEEP_MS per record so it lags behind ``relay``, and faults in ``relay``
happen while ``win`` still has a backlog. ``relay`` sleeps KWHEEL_TEST_RELAY_SLEEP_MS per record,
and KWHEEL_TEST_RELAY_SLOW_S once, on
the record whose ``seq`` is KWHEEL_TEST_RELAY_SLOW_SEQ (the file KWHEEL_TEST_RELAY_SLOW_MARK
remembers it did): a user function slower than the transaction timeout.
"""

import os
import time

from kwheel import Computation, Pipeline, Tumbling, WindowedAggregation

SLEEP_S = float(os.environ.get("KWHEEL_TEST_WIN_SLEEP_MS", "0")) / 1000


RELAY_SLEEP_S = float(os.environ.get("KWHEEL_TEST_RELAY_SLEEP_MS", "0")) / 1000


class Relay(Computation):
    def process_record(self, ctx, record):
        if RELAY_SLEEP_S:
            time.sleep(RELAY_SLEEP_S)
        mark = os.environ.get("KWHEEL_TEST_RELAY_SLOW_MARK")
        if (
            mark
            and record.value["seq"] == int(os.environ["KWHEEL_TEST_RELAY_SLOW_SEQ"])
            and not os.path.exists(mark)
        ):
            open(mark, "w").close()
            time.sleep(float(os.environ["KWHEEL_TEST_RELAY_SLOW_S"]))
        ctx.produce("relayed", ctx.key, record.value, record.timestamp)


class Win(WindowedAggregation):
    windows = Tumbling(1000)

    def initial(self):
        return (0, 0)

    def add(self, acc, record):
        if SLEEP_S:
            time.sleep(SLEEP_S)
        return (acc[0] + 1, acc[1] + record.value["seq"])

    def emit(self, ctx, window, acc):
        ctx.produce(
            "windows",
            ctx.key,
            {"key": ctx.key, "start": window.start, "count": acc[0], "sum": acc[1]},
        )


def pipeline(name: str | None = None, partitions: int = 3) -> Pipeline:
    p = Pipeline(name or os.environ.get("KWHEEL_TEST_PIPELINE", "relay_windows"))
    p.stream("events", partitions=partitions, value="json", source=True)
    p.stream("relayed", partitions=partitions, value="json")
    p.stream("windows", partitions=2, value="json")
    p.computation("relay", Relay, inputs=["events"], outputs=["relayed"])
    p.computation("win", Win, inputs=["relayed"], outputs=["windows"])
    return p
