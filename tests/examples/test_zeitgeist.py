"""examples/zeitgeist: the model finds the planted anomalies (in the driver, in seconds), and
the driver and workers on the broker commit identical outputs from the same traffic."""

import time

from examples.zeitgeist.pipeline import IDLE_WINDOWS, WARMUP_WINDOWS, build
from examples.zeitgeist.traffic import Traffic
from kwheel.testing import END
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import WatermarkTail

REF = "examples.zeitgeist.pipeline:pipeline"
FALSE_POSITIVE_BOUND = 2  # flagged windows that no planted anomaly explains
PARAMS = {"seed": 3, "queries": 20, "seconds": 60, "spikes": 3, "dips": 3}


def traffic(start_ms: int) -> Traffic:
    return Traffic(**PARAMS, start_ms=start_ms)


def env(name: str, start_ms: int) -> dict[str, str]:
    """How worker and injector processes build the same pipeline (examples/zeitgeist/pipeline.py)."""
    return {
        "KWHEEL_ZEITGEIST_NAME": name,
        "KWHEEL_ZEITGEIST_START_MS": str(start_ms),
        **{f"KWHEEL_ZEITGEIST_{k.upper()}": str(v) for k, v in PARAMS.items()},
    }


def test_the_model_finds_the_planted_anomalies_in_the_driver(kwheel_driver):
    t = traffic(start_ms=1_700_000_000_000)
    d = kwheel_driver(build("zeitgeist", t), wall_clock_ms=0)
    sent = d.run_injector("queries")
    assert sent == d.stats("window_counter")["processed"]
    assert d.stats("window_counter")["late"] == 0  # bounded disorder: nothing behind the watermark
    assert d.watermark("model") == END
    found = {(a.value["query"], a.value["kind"], a.value["start"]) for a in d.outputs("anomalies")}
    _, planted = t.plan()
    assert {a.kind for a in planted} == {"spike", "dip"}
    for a in planted:
        missing = [s for s in a.window_starts if (a.query, a.kind, s) not in found]
        assert not missing, f"planted {a.kind} of {a.query} not reported for windows {missing}"
    planted_windows = {(a.query, a.kind, s) for a in planted for s in a.window_starts}
    assert len(found - planted_windows) <= FALSE_POSITIVE_BOUND, (
        f"unexplained: {sorted(found - planted_windows)}"
    )
    # one count per query and window (every query has traffic in every window but its dips)
    dips = sum(a.windows for a in planted if a.kind == "dip")
    assert len(d.outputs("counts")) == PARAMS["queries"] * PARAMS["seconds"] - dips
    model = d.state("model", "query-000")
    assert (
        model["n"] >= WARMUP_WINDOWS
        and model["last"] == t.start_ms + (PARAMS["seconds"] - 1) * 1000
    )
    assert d.timers("model") == []  # the input ended: no window is awaited any more


def test_an_empty_window_is_noticed_by_the_models_timer(kwheel_driver):
    d = kwheel_driver(build("zeitgeist"), only="model", wall_clock_ms=0)
    for start in range(0, 12_000, 1000):  # warm up on a steady 50 per window
        d.send("counts", "q", {"query": "q", "start": start, "count": 50}, timestamp=start + 1000)
    d.advance_watermark("counts", 12_999)
    assert [t.timestamp for t in d.timers("model", "q")] == [
        13_000
    ]  # awaiting the count of window 12 s
    assert d.outputs("anomalies") == []
    d.advance_watermark("counts", 13_000)  # it never came: the window was empty, far below 50
    [dip] = d.outputs("anomalies")
    assert dip.value == {
        "query": "q",
        "kind": "dip",
        "start": 12_000,
        "count": 0,
        "expected": 50.0,
        "magnitude": 0.0,
    }
    assert d.state("model", "q")["idle"] == 1
    assert [t.timestamp for t in d.timers("model", "q")] == [14_000]
    d.advance_watermark("counts", 100_000)
    assert d.state("model", "q")["idle"] == IDLE_WINDOWS  # then it stops expecting traffic
    assert d.timers("model") == []


def test_the_driver_and_workers_on_kafka_commit_identical_outputs(
    kwheel_driver, kwheel_pipeline_runner, name
):
    start_ms = (int(time.time()) - PARAMS["seconds"]) * 1000  # recent: brokers keep such records
    d = kwheel_driver(build(name, traffic(start_ms)), wall_clock_ms=0)
    d.run_injector("queries")
    run = kwheel_pipeline_runner(build(name, traffic(start_ms)), REF, env=env(name, start_ms))
    run.start_workers(2)
    run.inject("queries")
    run.wait_for_watermark("model", END, 120)
    tail = WatermarkTail(run.bootstrap, run.pipeline)  # what the demo watches agrees

    def tail_at_end() -> bool:
        tail.poll(0.2)
        return tail.output_watermark("model") == END

    try:
        wait_until(tail_at_end, 30, "the watermark tail to reach the end")
    finally:
        tail.close()
    run.stop_workers()

    def rows(records):
        return sorted((r.key, sorted(r.value.items()), r.timestamp) for r in records)

    for stream in ("counts", "anomalies"):
        in_driver, on_kafka = rows(d.outputs(stream)), rows(run.outputs(stream))
        assert len(in_driver) > 0
        assert on_kafka == in_driver, (
            f"{stream}: {len(on_kafka)} records on Kafka, {len(in_driver)} in the driver"
        )
