"""``kwheel ui``: a read-only web page of the pipeline graph and its live status.

The graph is drawn once, server-side, as inline SVG from the pipeline declaration; the
numbers come from ``kwheel.status.collect`` (what ``kwheel status`` shows), cached for a
moment so any number of open pages costs one collection per interval. Standard library
only, no external assets (it must work offline), and only GET: nothing can be changed
from the page, and no setting (least of all a secret) is shown.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .config import WorkerConfig
from .errors import KwheelError
from .pipeline import Pipeline

log = logging.getLogger("kwheel.ui")

STATIC = Path(__file__).with_name("ui_static")
CACHE_S = 0.5
COL_W, NODE_W, ROW_H, PAD = 240, 200, 96, 16
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; frame-ancestors 'none'",
}


# ---- the graph ---------------------------------------------------------------------------
@dataclass
class Node:
    id: str
    kind: str  # "injector", "stream" or "computation"
    name: str
    detail: str
    layer: int = 0
    row: int = 0


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str  # "data", "rekey" (read through a repartition topic) or "dead" (dead letters)


def graph(pipeline: Pipeline) -> tuple[list[Node], list[Edge]]:
    """Injectors, streams and computations in columns by their distance from the sources."""
    pipeline.validate()
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    for inj in pipeline.injectors.values():
        nodes[f"injector:{inj.name}"] = Node(
            f"injector:{inj.name}", "injector", inj.name, "injector"
        )
    for s in pipeline.streams.values():
        nodes[f"stream:{s.name}"] = Node(
            f"stream:{s.name}",
            "stream",
            s.name,
            f"{s.partitions} partition{'s' if s.partitions != 1 else ''}",
        )
    for c in pipeline.computations.values():
        cid = f"computation:{c.name}"
        nodes[cid] = Node(
            cid, "computation", c.name, f"{c.partitions} task{'s' if c.partitions != 1 else ''}"
        )
        edges += [
            Edge(f"stream:{pipeline.feed_stream(c.name, i)}", cid, "rekey" if i.key_by else "data")
            for i in c.inputs
        ]
        edges += [Edge(cid, f"stream:{o}", "data") for o in c.outputs]
        if c.dead_letter:
            edges.append(Edge(cid, f"stream:{c.dead_letter}", "dead"))
    for inj in pipeline.injectors.values():
        edges += [Edge(f"injector:{inj.name}", f"stream:{o}", "data") for o in inj.outputs]
    for _ in range(len(nodes)):  # longest path from a source; bounded, so a cycle cannot hang it
        changed = False
        for e in edges:
            if nodes[e.dst].layer < nodes[e.src].layer + 1 <= len(nodes):
                nodes[e.dst].layer = nodes[e.src].layer + 1
                changed = True
        if not changed:
            break
    rows: dict[int, int] = {}
    for n in nodes.values():
        n.row = rows.get(n.layer, 0)
        rows[n.layer] = n.row + 1
    return list(nodes.values()), edges


def _box(n: Node) -> tuple[int, int, int, int]:
    h = 64 if n.kind == "computation" else 44
    x = PAD + n.layer * COL_W
    y = PAD + n.row * ROW_H + (64 - h) // 2
    return x, y, NODE_W, h


def svg(pipeline: Pipeline) -> str:
    """The graph as an inline SVG; computations carry a live summary line the page fills in."""
    nodes, edges = graph(pipeline)
    boxes = {n.id: _box(n) for n in nodes}
    width = PAD * 2 + (max(n.layer for n in nodes) * COL_W) + NODE_W
    height = PAD * 2 + max(n.row for n in nodes) * ROW_H + 64
    e = html.escape
    out = [
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="pipeline graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    for ed in edges:
        sx, sy, sw, sh = boxes[ed.src]
        dx, dy, _, dh = boxes[ed.dst]
        x1, y1, x2, y2 = sx + sw, sy + sh / 2, dx, dy + dh / 2
        mid = (x1 + x2) / 2
        out.append(
            f'<path class="edge {ed.kind}" data-edge="{e(ed.src)}&gt;{e(ed.dst)}" '
            f'd="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" marker-end="url(#arrow)"/>'
        )
    for n in nodes:
        x, y, w, h = boxes[n.id]
        rx = h // 2 if n.kind == "stream" else 6
        out.append(f'<g class="node {n.kind}" data-node="{e(n.id)}">')
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}"/>')
        out.append(f'<text class="name" x="{x + w / 2}" y="{y + 18}">{e(n.name)}</text>')
        out.append(f'<text class="detail" x="{x + w / 2}" y="{y + 34}">{e(n.detail)}</text>')
        if n.kind == "computation":
            out.append(
                f'<text class="live" x="{x + w / 2}" y="{y + 52}" data-computation="{e(n.name)}" '
                f'data-field="summary">…</text>'
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


COLUMNS = (
    ("low_watermark", "low watermark"),
    ("watermark_lag_ms", "watermark lag"),
    ("lag", "lag (records)"),
    ("records_per_s", "records/s"),
    ("processed", "processed"),
    ("duplicates", "duplicates"),
    ("late", "late"),
    ("dead_lettered", "dead letters"),
    ("pending_timers", "pending timers"),
)


def page(pipeline: Pipeline) -> str:
    e = html.escape
    head = "".join(f"<th>{e(label)}</th>" for _, label in COLUMNS)
    rows = "".join(
        f'<tr data-computation="{e(c)}"><th scope="row">{e(c)}</th>'
        + "".join(f'<td data-field="{f}">…</td>' for f, _ in COLUMNS)
        + "</tr>"
        for c in pipeline.computations
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kwheel · {e(pipeline.name)}</title>
<link rel="stylesheet" href="ui.css"></head>
<body>
<header><h1>kwheel <span class="pipeline">{e(pipeline.name)}</span></h1>
<p class="state" id="state" data-state="loading">loading…</p></header>
<section><h2>Graph</h2><div class="scroll">{svg(pipeline)}</div></section>
<section><h2>Computations</h2><div class="scroll"><table id="computations">
<thead><tr><th>computation</th>{head}</tr></thead><tbody>{rows}</tbody></table></div></section>
<section><h2>Injectors</h2><div class="scroll"><table id="injectors">
<thead><tr><th>producer</th><th>streams</th><th>low watermark</th><th>sent</th><th>finished</th><th>last report</th></tr></thead>
<tbody></tbody></table></div><p class="none" id="no-injectors">No injector has reported yet.</p></section>
<footer>Read-only. Numbers as <code>kwheel status</code> shows them, refreshed every second.</footer>
<script src="ui.js"></script>
</body></html>
"""


# ---- serving ---------------------------------------------------------------------------
class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class StatusCache:
    """At most one status collection per ``max_age_s``, shared by every request."""

    def __init__(self, fetch: Callable[[], Mapping[str, object]], max_age_s: float = CACHE_S):
        self.fetch = fetch
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: tuple[int, Mapping[str, object]] = (503, {"error": "not collected yet"})

    def get(self) -> tuple[int, Mapping[str, object]]:
        with self._lock:
            if time.monotonic() - self._at >= self.max_age_s:
                try:
                    self._value = (200, self.fetch())
                except KwheelError as err:
                    self._value = (503, {"error": str(err)[:500]})
                except Exception as err:  # the page says so and keeps polling
                    log.warning("status collection failed: %s", err)
                    self._value = (503, {"error": f"{type(err).__name__}: {err}"[:500]})
                self._at = time.monotonic()
            return self._value


def make_server(
    pipeline: Pipeline,
    cfg: WorkerConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    fetch: Callable[[], Mapping[str, object]] | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server for the page (not started: call serve_forever)."""
    from .status import collect

    cache = StatusCache(fetch or (lambda: collect(pipeline, cfg)))
    files = {
        "/": ("text/html; charset=utf-8", page(pipeline).encode()),
        "/ui.js": ("text/javascript; charset=utf-8", (STATIC / "ui.js").read_bytes()),
        "/ui.css": ("text/css; charset=utf-8", (STATIC / "ui.css").read_bytes()),
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "kwheel-ui"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api/status":
                code, body = cache.get()
                self._send(code, "application/json", json.dumps(body).encode())
            elif path in files:
                self._send(200, *files[path])
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

    try:
        server = (_Server6 if ":" in host else ThreadingHTTPServer)((host, port), Handler)
    except OSError as err:
        raise KwheelError(
            f"kwheel ui: cannot listen on {host}:{port}: {err.strerror or err}"
        ) from None
    server.daemon_threads = True
    return server
