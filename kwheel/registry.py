"""The Confluent schema registry of Avro serdes, passed to them by whatever runs a pipeline.

A pipeline (with its serdes) is built when its module is imported, before a worker or
producer has read its configuration. So a serde declared with ``registry=True`` names no
registry: the worker, ``StreamProducer`` or test driver running the pipeline builds a
``SchemaRegistry`` from its configuration and runs a copy of the pipeline whose serdes use
it (``bind``). A serde given its own URL has a registry of its own. Clients are created on
first use, so a pipeline that never reaches an Avro record never connects.

The basic-auth credentials (``schema_registry_auth``) are sent only to the configured
``schema_registry_url``, and never appear in a message: URLs are shown without user info.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from .errors import RegistryError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from .config import WorkerConfig
    from .pipeline import Pipeline
    from .serde import Serde


class SchemaRegistry:
    """A registry (``url``, with basic auth ``user:password``) and its client once used."""

    def __init__(self, url: str, auth: str | None = None):
        self.url = url
        self.auth = auth
        self._lock = threading.Lock()
        self._client: SchemaRegistryClient | None = None

    @classmethod
    def from_config(cls, cfg: WorkerConfig) -> SchemaRegistry | None:
        """The registry of a worker's configuration, or None if it names none."""
        url = cfg.schema_registry_url
        return cls(url, cfg.schema_registry_auth) if url else None

    def client(self) -> SchemaRegistryClient:
        """confluent-kafka's SchemaRegistryClient for this registry, created on first use."""
        with self._lock:
            if self._client is None:
                from confluent_kafka.schema_registry import SchemaRegistryClient

                conf: dict[str, object] = {"url": self.url}
                if self.auth:
                    conf["basic.auth.user.info"] = self.auth
                try:
                    self._client = SchemaRegistryClient(conf)
                except (ValueError, TypeError) as e:
                    raise RegistryError(
                        f"schema registry {redact(self.url)}: {hide(str(e), self.auth, self.url)}"
                    ) from None
            return self._client

    def failure(self, what: str, e: Exception) -> RegistryError:
        """A RegistryError for a failed request, without credentials."""
        code = getattr(e, "http_status_code", None)
        detail = (
            f"HTTP {code}: {getattr(e, 'error_message', e)}"
            if code is not None
            else f"{type(e).__name__}: {e}"
        )
        return RegistryError(
            f"schema registry {redact(self.url)}: {what} failed: "
            f"{hide(detail, self.auth, self.url)}"
        )


def missing() -> RegistryError:
    """What a serde declared with ``registry=True`` raises when run without a registry."""
    return RegistryError(
        "an Avro serde needs a schema registry: set KWHEEL_SCHEMA_REGISTRY_URL "
        "(config schema_registry_url) or give the serde registry='http://...'"
    )


def bind(pipeline: Pipeline, registry: SchemaRegistry | None) -> Pipeline:
    """``pipeline`` with its serdes using ``registry``: a copy when some serde takes it (one
    declared with ``registry=True``, or with the registry's own URL), else ``pipeline``."""
    from .serde import with_registry  # serde imports this module

    if registry is None:
        return pipeline
    bound: dict[int, Serde] = {}  # id(serde) -> its bound copy: shared serdes stay shared

    def use(serde: Serde) -> Serde:
        if id(serde) not in bound:
            bound[id(serde)] = with_registry(serde, registry)
        return bound[id(serde)]

    streams = {}
    for name, s in pipeline.streams.items():
        key, value = use(s.key_serde), use(s.value_serde)
        same = key is s.key_serde and value is s.value_serde
        streams[name] = s if same else replace(s, key_serde=key, value_serde=value)
    if all(streams[n] is s for n, s in pipeline.streams.items()):
        return pipeline
    return replace(
        pipeline,
        streams=streams,
        computations=dict(pipeline.computations),
        injectors=dict(pipeline.injectors),
    )


def redact(url: str) -> str:
    """``url`` without user info (``https://user:pw@host`` -> ``https://host``), for messages."""
    out = []
    for u in url.split(","):
        parts = urlsplit(u.strip())
        host = parts.netloc.rpartition("@")[2]
        out.append(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


def hide(text: str, auth: str | None, url: str = "") -> str:
    """``text`` with the passwords of ``auth`` and of ``url``'s user info masked."""
    secrets = [auth.split(":", 1)[1]] if auth and ":" in auth else []
    for u in url.split(","):
        try:
            secrets.append(urlsplit(u.strip()).password or "")
        except ValueError:
            pass
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
