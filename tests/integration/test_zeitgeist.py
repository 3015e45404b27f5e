"""The Zeitgeist example finds every planted spike and dip, and little else."""

import json
import os
import subprocess
import sys
import time

from examples.zeitgeist.pipeline import build
from examples.zeitgeist.traffic import Traffic
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from tests.conftest import ROOT
from tests.helpers import latest_watermark, setup_topics

REF = "examples.zeitgeist.pipeline:pipeline"
FALSE_POSITIVE_BOUND = 2  # flagged windows that no planted anomaly explains


def test_zeitgeist_finds_the_planted_anomalies(kafka, name, workers):
    traffic = Traffic(
        seed=3, queries=20, seconds=60, spikes=3, dips=3, start_ms=(int(time.time()) - 60) * 1000
    )
    env = {
        "KWHEEL_ZEITGEIST_NAME": name,
        "KWHEEL_ZEITGEIST_SEED": "3",
        "KWHEEL_ZEITGEIST_QUERIES": "20",
        "KWHEEL_ZEITGEIST_SECONDS": "60",
        "KWHEEL_ZEITGEIST_SPIKES": "3",
        "KWHEEL_ZEITGEIST_DIPS": "3",
        "KWHEEL_ZEITGEIST_START_MS": str(traffic.start_ms),
    }
    p = build(name, traffic)
    setup_topics(kafka.bootstrap, p)
    w = workers(REF, name, slot="z0", env=env)
    inject = subprocess.run(
        [sys.executable, "-m", "kwheel", "inject", REF, "queries", "-b", kafka.bootstrap],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert inject.returncode == 0, inject.stderr
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:model/") == MAX_WATERMARK,
        90,
        "the model to see the end of the traffic",
    )
    assert w.stop() == 0
    found = {
        (a["query"], a["kind"], a["start"])
        for a in (json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.anomalies"))
    }
    _, planted = traffic.plan()
    assert {a.kind for a in planted} == {"spike", "dip"}
    for a in planted:
        missing = [s for s in a.window_starts if (a.query, a.kind, s) not in found]
        assert not missing, f"planted {a.kind} of {a.query} not reported for windows {missing}"
    planted_windows = {(a.query, a.kind, s) for a in planted for s in a.window_starts}
    extra = found - planted_windows
    assert len(extra) <= FALSE_POSITIVE_BOUND, f"unexplained anomalies: {sorted(extra)}"
