"""examples/tutorial.py in the driver: its injector reads a JSON-lines file, a line without a
page is set aside in ``rejected``, and page minutes are emitted once the watermark passes."""

import json

from examples.tutorial import pipeline

MINUTE = 60_000
T0 = 1_735_689_600_000  # a minute boundary


def test_page_minutes_and_rejected_lines(kwheel_driver, tmp_path, monkeypatch):
    views = [
        {"user": "ann", "page": "/home", "ts": T0 + 1_000},
        {"user": "bob", "page": "/home", "ts": T0 + 2_000},
        {"user": "ann", "page": "/home", "ts": T0 + 3_000},
        {"user": "ann", "ts": T0 + 4_000},  # no page: rejected
        {"user": "bob", "page": "/docs", "ts": T0 + MINUTE + 6_000},
    ]
    path = tmp_path / "views.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in views))
    monkeypatch.setenv("TUTORIAL_VIEWS", str(path))
    d = kwheel_driver(pipeline, wall_clock_ms=0)
    assert d.run_injector("views", final=False) == len(views)
    # the watermark trails the newest view by the injector's disorder bound (5 s): minute 0 is complete
    assert [
        (r.key, r.value["minute"], r.value["views"], r.value["new_visitors"])
        for r in d.outputs("page_minutes")
    ] == [("/home", T0, 3, 2)]
    [rejected] = d.messages("rejected")
    assert json.loads(rejected.value()) == views[3]
    assert b"KeyError: 'page'" in dict(rejected.headers())["kwheel.error"]
    assert d.state("per_user", "ann") == {"views": 2}
    d.finish()
    assert [r.key for r in d.outputs("page_minutes")] == ["/home", "/docs"]
