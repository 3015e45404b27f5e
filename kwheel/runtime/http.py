"""The worker's HTTP port: Prometheus metrics at ``/metrics`` (any other path too, as
prometheus-client serves them), liveness at ``/healthz`` and readiness at ``/ready``
(200 or 503, with a small JSON body: kwheel/runtime/health.py)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from .health import WorkerHealth

REASONS = {200: "200 OK", 503: "503 Service Unavailable"}


def serve(
    host: str, port: int, registry: CollectorRegistry, health: WorkerHealth | None
) -> WSGIServer:
    """Listen on ``host:port`` and answer from daemon threads; raises OSError if it cannot."""
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if health is None or path not in ("/healthz", "/ready"):
            return cast(Iterable[bytes], metrics(environ, start_response))
        code, body = health.live() if path == "/healthz" else health.ready()
        data = json.dumps(body).encode()
        start_response(
            REASONS[code],
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    class Server(ThreadingWSGIServer):
        pass

    # the address family of the host, IPv6 included (as prometheus-client does)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    Server.address_family, addr = info[0][0], str(info[0][4][0])
    httpd = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="kwheel-http", daemon=True).start()
    return httpd
