"""Log lines that say which computation, task and partition they are about.

The runtime marks the code that works for one task (``@scoped`` on Task and
ComputationRunner methods); a context variable carries the computation and partition
into every log call made meanwhile, kwheel's and the user's own (``process_record`` runs
inside it). Setting it costs one ContextVar set/reset per task batch, not per record.
The handler's filter copies the context onto each record; the formatters print it as
``[computation=... partition=...]`` (text) or as fields of one JSON object per line.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Concatenate, ParamSpec, Protocol, TypeVar

# (computation, partition): partition is None for work of a whole computation.
_context: ContextVar[tuple[str, int | None] | None] = ContextVar("kwheel_log_context", default=None)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Scoped(Protocol):
    """A task or a computation's runner: what ``scoped`` reads (and ``partition`` if it has one)."""

    @property
    def spec(self) -> _Named: ...


class _Task(_Scoped, Protocol):
    @property
    def partition(self) -> int: ...


S = TypeVar("S", bound=_Scoped)
P = ParamSpec("P")
R = TypeVar("R")


class log_context:  # noqa: N801 - used like a function: ``with log_context("counter", 3): ...``
    """Log calls inside are about ``computation`` (and its task for ``partition``)."""

    __slots__ = ("value", "token")
    token: Token[tuple[str, int | None] | None]

    def __init__(self, computation: str, partition: int | None = None):
        self.value: tuple[str, int | None] = (computation, partition)

    def __enter__(self) -> None:
        self.token = _context.set(self.value)

    def __exit__(self, *_: object) -> None:
        _context.reset(self.token)


def scoped(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run a method of a task (``self.spec.name``, ``self.partition``) or of a computation's
    runner (``self.spec.name``) inside its log context."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        token = _context.set((self.spec.name, getattr(self, "partition", None)))
        try:
            return method(self, *args, **kwargs)
        finally:
            _context.reset(token)

    return wrapper


def about(task: _Task) -> dict[str, object]:
    """``extra=`` for a log call about a task (``.spec.name``, ``.partition``) made outside
    its scoped methods."""
    return {
        "computation": task.spec.name,
        "partition": task.partition,
        "task": f"{task.spec.name}[{task.partition}]",
    }


def current() -> tuple[str, int | None] | None:
    """The (computation, partition) log calls are about right now, if any."""
    return _context.get()


class ContextFilter(logging.Filter):
    """Adds ``computation``, ``task``, ``partition`` (when known) and ``slot`` to each record.
    Attributes given with ``extra=`` win."""

    def __init__(self, slot: str | None = None):
        super().__init__()
        self.slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        if ctx is not None and not hasattr(record, "computation"):
            record.computation, partition = ctx
            if partition is not None:
                record.partition = partition
                record.task = f"{ctx[0]}[{partition}]"
        if self.slot is not None:
            record.slot = self.slot
        return True


CONTEXT_FIELDS = ("computation", "task", "partition", "slot")


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> [computation=... partition=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = [
            f"{k}={getattr(record, k)}" for k in ("computation", "partition") if hasattr(record, k)
        ]
        if not ctx:
            return line
        head, nl, rest = line.partition("\n")  # keep a traceback below the tagged line
        return f"{head} [{' '.join(ctx)}]{nl}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, message, pid, the
    context fields when known, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        secs = int(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int(record.msecs):03d}Z"
        out: dict[str, object] = {
            "ts": ts,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for k in CONTEXT_FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", slot: str | None = None) -> None:
    """Send all logs to stderr at ``level`` and up, as ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(slot))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
