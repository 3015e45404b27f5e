"""A small Confluent-compatible schema registry for tests: NOT a product feature.

No schema registry can run on the test machines (no Docker; Confluent's registry needs a
JVM, and Karapace is not on PyPI), so the tests talk to this one over real HTTP on a
loopback port. It implements the subset of the Confluent REST API that
confluent-kafka's ``SchemaRegistryClient`` uses for Avro serdes, with the same shapes and
error codes:

- ``POST /subjects/{subject}/versions``: register (same schema again: same id), ``{"id"}``
- ``POST /subjects/{subject}``: look a schema up in a subject (40401 / 40403 when absent)
- ``GET /schemas/ids/{id}``: the schema of an id (404, error code 40403, when unknown)
- ``GET /subjects``, ``GET /subjects/{subject}/versions``,
  ``GET /subjects/{subject}/versions/{version|latest}``

Ids are global (one per distinct schema, compared on canonical JSON), versions count per
subject; compatibility checks, references, modes and deletes are not implemented. With
``auth=("user", "password")`` every request needs that HTTP basic auth (401 otherwise),
to test that credentials are passed through.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class TestRegistry:
    """Start with ``start()`` (or as a context manager); ``url`` is http://127.0.0.1:PORT."""

    __test__ = False  # not a pytest test class

    def __init__(self, auth: tuple[str, str] | None = None, port: int = 0):
        self.auth = auth
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}  # canonical schema -> id
        self._schemas: dict[int, tuple[str, str]] = {}  # id -> (schema string, schema type)
        self._subjects: dict[str, list[int]] = {}  # subject -> ids by version - 1
        self.requests: list[tuple[str, str]] = []  # (method, path): what clients asked
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> TestRegistry:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-registry", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> TestRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the API, as plain functions of (method, path, body) -> (status, body) ------------
    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, object]:
        parts = [unquote(p) for p in urlsplit(path).path.strip("/").split("/")]
        with self._lock:
            self.requests.append((method, path))
            if (
                method == "POST"
                and len(parts) == 3
                and parts[0] == "subjects"
                and parts[2] == "versions"
            ):
                return self._register(parts[1], body or {})
            if method == "POST" and len(parts) == 2 and parts[0] == "subjects":
                return self._lookup(parts[1], body or {})
            if (
                method == "GET"
                and len(parts) == 3
                and parts[:2] == ["schemas", "ids"]
                and parts[2].isdigit()
            ):
                found = self._schemas.get(int(parts[2]))
                if found is None:
                    return 404, _error(40403, f"Schema {parts[2]} not found")
                return 200, _schema_body(*found)
            if method == "GET" and parts == ["subjects"]:
                return 200, sorted(self._subjects)
            if (
                method == "GET"
                and len(parts) >= 3
                and parts[0] == "subjects"
                and parts[2] == "versions"
            ):
                versions = self._subjects.get(parts[1])
                if versions is None:
                    return 404, _error(40401, f"Subject '{parts[1]}' not found.")
                if len(parts) == 3:
                    return 200, list(range(1, len(versions) + 1))
                v = (
                    len(versions)
                    if parts[3] == "latest"
                    else int(parts[3])
                    if parts[3].isdigit()
                    else 0
                )
                if not 1 <= v <= len(versions):
                    return 404, _error(40402, f"Version {parts[3]} not found.")
                return 200, self._version(parts[1], v)
        return 404, _error(
            404, f"HTTP 404 Not Found: {method} {path} is not implemented by the test registry"
        )

    def _register(self, subject: str, body: dict[str, Any]) -> tuple[int, object]:
        schema, stype = body.get("schema"), body.get("schemaType", "AVRO")
        if not isinstance(schema, str):
            return 422, _error(42201, "Invalid schema: no schema string")
        try:
            canon = _canonical(schema)
        except ValueError as e:
            return 422, _error(42201, f"Invalid schema: {e}")
        sid = self._ids.get(canon)
        if sid is None:
            sid = self._ids[canon] = len(self._ids) + 1
            self._schemas[sid] = (schema, stype)
        versions = self._subjects.setdefault(subject, [])
        if sid not in versions:
            versions.append(sid)
        return 200, {"id": sid}

    def _lookup(self, subject: str, body: dict[str, Any]) -> tuple[int, object]:
        versions = self._subjects.get(subject)
        if versions is None:
            return 404, _error(40401, f"Subject '{subject}' not found.")
        try:
            sid = self._ids.get(_canonical(body.get("schema", "")))
        except ValueError:
            sid = None
        if sid is None or sid not in versions:
            return 404, _error(40403, "Schema not found")
        return 200, self._version(subject, versions.index(sid) + 1)

    def _version(self, subject: str, version: int) -> dict[str, object]:
        sid = self._subjects[subject][version - 1]
        return {
            "subject": subject,
            "version": version,
            "id": sid,
            **_schema_body(*self._schemas[sid]),
        }


def _canonical(schema: str) -> str:
    return json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))


def _schema_body(schema: str, stype: str) -> dict[str, str]:
    # like Confluent's registry: schemaType is left out for Avro
    return {"schema": schema} if stype == "AVRO" else {"schema": schema, "schemaType": stype}


def _error(code: int, message: str) -> dict[str, object]:
    return {"error_code": code, "message": message}


def _handler(registry: TestRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if registry.auth is not None and not self._authorised():
                self._reply(401, _error(40101, "Unauthorized"))
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._reply(400, _error(400, "request body is not JSON"))
                return
            status, out = registry.handle(method, self.path, body)
            self._reply(status, out)

        def _authorised(self) -> bool:
            user, password = cast("tuple[str, str]", registry.auth)  # _serve checked it is set
            want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            return self.headers.get("Authorization") == want

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(
            self, format: str, *args: object
        ) -> None:  # quiet: tests read their own logs
            pass

    return Handler
