"""`kwheel ui` without a broker: the graph layout, escaping, the status cache, the routes."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from kwheel import Computation, Input, Pipeline
from kwheel.config import WorkerConfig
from kwheel.ui import StatusCache, graph, make_server, page, svg


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def two_stage(name: str = "p") -> Pipeline:
    p = Pipeline(name)
    p.stream("events", partitions=2, source=True)
    p.stream("mid", partitions=2)
    p.stream("out")
    p.stream("dead", value="bytes")
    p.computation(
        "first",
        Nop,
        inputs=[Input("events", key_by=lambda r: r.value["k"])],
        outputs=["mid"],
        dead_letter="dead",
    )
    p.computation("second", Nop, inputs=["mid"], outputs=["out"])
    return p


def test_nodes_are_layered_by_distance_from_the_sources():
    nodes, edges = graph(two_stage())
    layers = {n.id: n.layer for n in nodes}
    # first re-keys the source stream events: through the stage kwheel adds (kwheel/rekey.py)
    assert layers == {
        "stream:events": 0,
        "computation:first.rekey.events": 1,
        "stream:first.rekey.events": 2,
        "computation:first": 3,
        "stream:mid": 4,
        "stream:dead": 4,
        "computation:second": 5,
        "stream:out": 6,
    }
    assert len({(n.layer, n.row) for n in nodes}) == len(nodes)  # no two boxes on one spot
    kinds = {(e.src, e.dst): e.kind for e in edges}
    assert kinds[("stream:first.rekey.events", "computation:first")] == "rekey"
    assert kinds[("computation:first", "stream:dead")] == "dead"


def test_a_cycle_does_not_hang_the_layout():
    p = Pipeline("loop")
    p.stream("a", source=True)
    p.stream("b")
    p.computation("c1", Nop, inputs=["a", "b"], outputs=["b"])
    nodes, _ = graph(p)
    assert all(n.layer <= len(nodes) for n in nodes)


def test_names_are_escaped():
    p = Pipeline("<b>x</b>")
    p.stream("<img src=x>", source=True)
    p.computation("c&<script>", Nop, inputs=["<img src=x>"])
    html = page(p)
    assert "<script>" not in html.replace('<script src="ui.js"></script>', "")
    assert "<img src=x>" not in html and "<b>x</b>" not in html
    assert "c&amp;&lt;script&gt;" in svg(p)


def test_the_status_is_collected_at_most_once_per_interval():
    calls = []
    cache = StatusCache(lambda: calls.append(1) or {"n": len(calls)}, max_age_s=60)
    assert cache.get() == (200, {"n": 1})
    assert cache.get() == (200, {"n": 1})
    assert len(calls) == 1
    cache.max_age_s = 0
    assert cache.get() == (200, {"n": 2})


def test_a_failed_collection_is_a_503_with_the_reason():
    def boom():
        raise RuntimeError("no broker")

    assert StatusCache(boom).get() == (503, {"error": "RuntimeError: no broker"})


@pytest.fixture
def server():
    s = make_server(
        two_stage(),
        WorkerConfig(),
        "127.0.0.1",
        0,
        fetch=lambda: {"pipeline": "p", "computations": []},
    )
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{s.server_port}"
    s.shutdown()
    s.server_close()


def test_routes(server):
    with urllib.request.urlopen(server + "/") as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert b'data-node="computation:second"' in r.read()
    with urllib.request.urlopen(server + "/api/status") as r:
        assert json.load(r) == {"pipeline": "p", "computations": []}
    for asset in ("/ui.js", "/ui.css"):
        with urllib.request.urlopen(server + asset) as r:
            assert r.status == 200 and r.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/../../etc/passwd")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:  # read-only
        urllib.request.urlopen(
            urllib.request.Request(server + "/api/status", data=b"x", method="POST")
        )
    assert e.value.code == 501


def test_a_port_in_use_is_a_one_line_error(server):
    from kwheel.errors import KwheelError

    port = int(server.rsplit(":", 1)[1])
    with pytest.raises(KwheelError, match=rf"kwheel ui: cannot listen on 127.0.0.1:{port}"):
        make_server(two_stage(), WorkerConfig(), "127.0.0.1", port)
