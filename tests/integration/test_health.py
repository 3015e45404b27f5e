"""/healthz and /ready of a real worker process, on its metrics port."""

import json
import re
import urllib.error
import urllib.request

from kwheel.testing.processes import wait_until
from tests.helpers import inject, setup_topics
from tests.pipelines.counting import sluggish_count

REF = "tests.pipelines.counting:sluggish_count"


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_healthz_and_ready_follow_the_worker_loop_and_its_tasks(kafka, name, workers, tmp_path):
    p = sluggish_count(name)
    w = workers(
        REF,
        name,
        args=["--metrics-port", "0"],
        env={
            "KWHEEL_LIVENESS_TIMEOUT_S": "1",
            "KWHEEL_STARTUP_TIMEOUT_S": "60",
            "KWHEEL_TEST_SLOW_MARK": str(tmp_path / "slept"),
        },
    )
    port = int(
        wait_until(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", w.log()),
            30,
            "the worker to log its port",
        ).group(1)
    )
    # its topics do not exist yet: it waits for them, alive but not ready
    wait_until(lambda: "waiting for topics" in w.log(), 30, "the worker to wait for its topics")
    assert get(port, "/healthz")[0] == 200
    code, body = get(port, "/ready")
    assert code == 503 and body["phase"] == "starting"

    setup_topics(kafka.bootstrap, p)
    code, body = wait_until(
        lambda: (r := get(port, "/ready"))[0] == 200 and r, 60, "the worker to be ready"
    )
    assert body == {"status": "ready", "phase": "running", "tasks": {"counter": [0, 1]}}
    assert get(port, "/healthz")[0] == 200
    assert b"kwheel_tasks" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()

    # a user function that takes 4 s blocks the loop past liveness_timeout_s=1
    inject(kafka.bootstrap, p, [("u1", {"user": "u1", "seq": 0, "slow": 4})])
    code, body = wait_until(
        lambda: (r := get(port, "/healthz"))[0] == 503 and r, 30, "/healthz to say stuck"
    )
    assert body["status"] == "stuck" and body["since_progress_s"] > 1
    wait_until(lambda: get(port, "/healthz")[0] == 200, 30, "/healthz to recover")
    assert w.stop() == 0
