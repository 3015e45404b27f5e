"""The Confluent schema registry clients that Avro serdes share, created on first use.

A pipeline (with its serdes) is built when its module is imported, before a worker or
producer has read its configuration. So serdes never hold a client from the start: on
their first encode or decode they ask ``client()`` here, which builds one from the
process's registry settings. ``Worker`` and ``StreamProducer`` call ``configure_from(cfg)``
when they start; a serde given its own URL uses that URL instead.

The basic-auth credentials (``schema_registry_auth``) are sent only to the configured
``schema_registry_url``, and never appear in a message: URLs are shown without user info.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit, urlunsplit

from .errors import RegistryError

_lock = threading.Lock()
_url: str | None = None
_auth: str | None = None
_clients: dict[tuple[str, str | None], object] = {}


def configure(url: str | None, auth: str | None = None) -> None:
    """Set this process's registry (``url``) and its basic auth (``user:password``)."""
    global _url, _auth
    with _lock:
        _url, _auth = url, auth


def configure_from(cfg: object) -> None:
    """Take the registry settings of a WorkerConfig, if it has any."""
    url = getattr(cfg, "schema_registry_url", None)
    if url:
        configure(url, getattr(cfg, "schema_registry_auth", None))


def configured_url() -> str | None:
    return _url


def client(url: str | None = None):
    """The shared client for ``url`` (default: the configured registry)."""
    with _lock:
        target = url or _url
        if not target:
            raise RegistryError(
                "an Avro serde needs a schema registry: set KWHEEL_SCHEMA_REGISTRY_URL "
                "(config schema_registry_url) or give the serde registry='http://...'"
            )
        auth = _auth if target == _url else None
        key = (target, auth)
        c = _clients.get(key)
        if c is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            conf: dict[str, object] = {"url": target}
            if auth:
                conf["basic.auth.user.info"] = auth
            try:
                c = SchemaRegistryClient(conf)
            except (ValueError, TypeError) as e:
                raise RegistryError(
                    f"schema registry {redact(target)}: {hide(str(e), auth, target)}"
                ) from None
            _clients[key] = c
        return c


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


def failure(url: str, what: str, e: Exception) -> RegistryError:
    """A RegistryError for a failed request, without credentials."""
    auth = _auth if url == _url else None
    code = getattr(e, "http_status_code", None)
    detail = (
        f"HTTP {code}: {getattr(e, 'error_message', e)}"
        if code is not None
        else f"{type(e).__name__}: {e}"
    )
    return RegistryError(f"schema registry {redact(url)}: {what} failed: {hide(detail, auth, url)}")
