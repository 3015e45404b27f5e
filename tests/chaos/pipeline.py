"""The chaos pipeline: injector -> per-user windows (timers) -> per-region windows (re-keyed) -> output.

events (injected, keyed by user)
  -> user_windows: per user, 1 s tumbling windows: count and sum of amounts; and one
     greeting per user from a wall-time timer set at its first record
  -> user_totals (keyed by user), greetings
  -> region_windows: re-keyed by region through a repartition topic, 1 s tumbling
     windows over the user totals' times: count and sum again; it lags behind
     (KWHEEL_CHAOS_LAG_MS of work per record), so faults upstream meet its backlog
  -> region_totals
"""

import os
import time

from kwheel import Input, Pipeline, Tumbling, WindowedAggregation

REGIONS = 7
LAG_S = int(os.environ.get("KWHEEL_CHAOS_LAG_MS", "0")) / 1000


def region_of(user: str) -> str:
    return f"r{int(user[1:]) % REGIONS}"


class UserWindows(WindowedAggregation):
    windows = Tumbling(1000)

    def initial(self):
        return [0, 0]

    def add(self, acc, record):
        return [acc[0] + 1, acc[1] + record.value["amount"]]

    def emit(self, ctx, window, acc):
        ctx.produce(
            "user_totals",
            ctx.key,
            {"user": ctx.key, "start": window.start, "n": acc[0], "sum": acc[1]},
        )

    def process_record(self, ctx, record):
        super().process_record(ctx, record)
        if "greeted" not in ctx.state:
            ctx.state["greeted"] = 1
            ctx.set_timer("greet", int(time.time() * 1000) + 200, domain="wall")

    def process_timer(self, ctx, timer):
        if timer.tag == "greet":
            ctx.produce("greetings", ctx.key, {"user": ctx.key})
        else:
            super().process_timer(ctx, timer)


class RegionWindows(WindowedAggregation):
    windows = Tumbling(1000)

    def initial(self):
        return [0, 0, 0]

    def add(self, acc, record):
        v = record.value
        return [acc[0] + 1, acc[1] + v["n"], acc[2] + v["sum"]]

    def process_record(self, ctx, record):
        time.sleep(LAG_S)
        super().process_record(ctx, record)

    def emit(self, ctx, window, acc):
        ctx.produce(
            "region_totals",
            ctx.key,
            {"region": ctx.key, "start": window.start, "users": acc[0], "n": acc[1], "sum": acc[2]},
        )


def chaos(name: str | None = None) -> Pipeline:
    p = Pipeline(name or os.environ.get("KWHEEL_TEST_PIPELINE", "chaos"))
    p.stream("events", partitions=6, value="json", source=True)
    p.stream("user_totals", partitions=6, value="json")
    p.stream("region_totals", partitions=3, value="json")
    p.stream("greetings", partitions=2, value="json")
    p.computation(
        "user_windows", UserWindows, inputs=["events"], outputs=["user_totals", "greetings"]
    )
    p.computation(
        "region_windows",
        RegionWindows,
        inputs=[Input("user_totals", key_by=lambda r: region_of(r.value["user"]))],
        outputs=["region_totals"],
        partitions=3,
    )
    return p
