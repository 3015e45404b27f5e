"""Worker logs as JSON lines that say which computation, task and partition they are about."""

import json
import re

from kwheel.testing.processes import wait_until
from tests.helpers import count_outputs, inject, make_events, setup_topics
from tests.pipelines.logged import logged_count

REF = "tests.pipelines.logged:logged_count"


def test_json_logs_name_computation_task_and_partition(kafka, name, workers):
    p = logged_count(name)
    setup_topics(kafka.bootstrap, p)
    events = make_events(500, keys=13)
    inject(kafka.bootstrap, p, events)
    w = workers(REF, name, slot="s0", args=["--log-format", "json"])
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0

    lines = [line for line in w.log().splitlines() if line and not line.startswith("=== start")]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    for r in records:
        assert {"ts", "level", "logger", "message", "pid"} <= set(r), r
        assert r["slot"] == "s0"

    def about_tasks(pattern: str) -> list[dict]:
        return [r for r in records if re.match(rf"counter\[\d\]: {pattern}", r["message"])]

    ready, closed = about_tasks("assigned and ready"), about_tasks("closed ")
    assert {r["partition"] for r in ready} == {0, 1} and {r["partition"] for r in closed} == {0, 1}
    for r in ready + closed:
        assert r["computation"] == "counter"
        assert r["task"] == f"counter[{r['partition']}]" and r["message"].startswith(
            r["task"] + ":"
        )
    # every record was processed, as the tasks' closing counters say
    assert sum(
        json.loads(r["message"].split(" closed ", 1)[1])["processed"] for r in closed
    ) == len(events)

    # the user's own log lines inside process_record carry the task they ran in
    user = [r for r in records if r["logger"] == "tests.logged"]
    assert len(user) == len([e for e in events if e[1]["seq"] % 50 == 0])
    for r in user:
        assert (
            r["computation"] == "counter"
            and r["partition"] in (0, 1)
            and r["task"] == f"counter[{r['partition']}]"
        )
    # the same key always comes from the same partition
    by_key: dict[str, set[int]] = {}
    for r in user:
        by_key.setdefault(r["message"].rsplit(" ", 1)[1], set()).add(r["partition"])
    assert all(len(ps) == 1 for ps in by_key.values())
    # lines about the worker as a whole carry no task
    assert any(
        r["message"].startswith("worker s0 running") and "partition" not in r for r in records
    )
