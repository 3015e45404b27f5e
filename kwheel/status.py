"""``kwheel status``: per computation and task, how far behind and how busy.

Everything comes from Kafka, so it works from any machine: consumer-group lag from the
committed offsets, watermarks and counters from the tasks' latest control records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal, TypedDict

from confluent_kafka import Consumer, TopicPartition

from .config import WorkerConfig
from .kafka import clients
from .pipeline import Pipeline
from .watermarks import MAX_WATERMARK, MIN_WATERMARK
from .watermarks.control import INJECTOR, task_producer_id
from .watermarks.transport import WatermarkReader
from .watermarks.upstream import WatermarkTable

CounterName = Literal[
    "processed", "duplicates", "late", "dead_lettered", "timers_fired", "pending_timers"
]
SUMMED: tuple[CounterName, ...] = (
    "processed",
    "duplicates",
    "late",
    "dead_lettered",
    "timers_fired",
    "pending_timers",
)


class Counters(TypedDict):
    """The task counters ``kwheel status`` shows (SUMMED), from the tasks' control records."""

    processed: int
    duplicates: int
    late: int
    dead_lettered: int
    timers_fired: int
    pending_timers: int


# Watermarks are shown as ms, "none" (no watermark yet) or "end" (the inputs ended).
class TaskStatus(Counters):
    partition: int
    lag: int
    low_watermark: int | str | None  # None: the task has not reported yet
    input_watermark: int | str | None
    watermark_lag_ms: int | None
    records_per_s: float
    reported_at: int | None


class ComputationStatus(Counters):
    name: str
    lag: int
    low_watermark: int | str | None  # None until every task has reported
    watermark_lag_ms: int | None
    records_per_s: float
    tasks: list[TaskStatus]


class InjectorStatus(TypedDict):
    producer: str
    streams: list[str]
    low_watermark: int | str
    final: bool
    retired: bool
    sent: int
    reported_at: int


class Status(TypedDict):
    """What ``collect`` returns (and ``kwheel status --json`` prints)."""

    pipeline: str
    time: int
    computations: list[ComputationStatus]
    injectors: list[InjectorStatus]


def _counters(stats: Mapping[str, int]) -> Counters:
    return {
        "processed": stats.get("processed", 0),
        "duplicates": stats.get("duplicates", 0),
        "late": stats.get("late", 0),
        "dead_lettered": stats.get("dead_lettered", 0),
        "timers_fired": stats.get("timers_fired", 0),
        "pending_timers": stats.get("pending_timers", 0),
    }


def collect(pipeline: Pipeline, cfg: WorkerConfig) -> Status:
    clients.wait_for_broker(cfg)
    table = WatermarkTable()
    reader = WatermarkReader(cfg, pipeline.watermark_topic(), table)
    try:
        reader.catch_up(cfg.startup_timeout_s)
    finally:
        reader.close()
    now = int(time.time() * 1000)
    out: Status = {"pipeline": pipeline.name, "time": now, "computations": [], "injectors": []}
    for name, spec in pipeline.computations.items():
        lag = _lag(pipeline, name, cfg)
        tasks: list[TaskStatus] = []
        for p in range(spec.partitions):
            latest = table.latest(task_producer_id(name, p))
            task: TaskStatus = {
                "partition": p,
                "lag": lag.get(p, 0),
                "low_watermark": None,
                "input_watermark": None,
                "watermark_lag_ms": None,
                "records_per_s": 0.0,
                "reported_at": None,
                **_counters({} if latest is None else latest.stats),
            }
            if latest is not None:
                task["low_watermark"] = _wm(latest.watermark)
                task["input_watermark"] = _wm(latest.input_watermark)
                task["watermark_lag_ms"] = _lag_ms(now, latest.watermark)
                task["records_per_s"] = _rate(table, task_producer_id(name, p))
                task["reported_at"] = latest.wall_time
            tasks.append(task)
        known = [w for t in tasks if (w := t["low_watermark"]) is not None]
        low = None if len(known) < len(tasks) else min(known, key=_order)
        comp: ComputationStatus = {
            "name": name,
            "lag": sum(t["lag"] for t in tasks),
            "low_watermark": low,
            "watermark_lag_ms": None if low is None or isinstance(low, str) else now - low,
            "records_per_s": round(sum(t["records_per_s"] for t in tasks), 1),
            "tasks": tasks,
            **_counters({k: sum(t[k] for t in tasks) for k in SUMMED}),
        }
        out["computations"].append(comp)
    for pid, dq in sorted(table.entries.items()):
        c = dq[-1]
        if c.kind == INJECTOR:
            out["injectors"].append(
                {
                    "producer": pid,
                    "streams": c.streams,
                    "low_watermark": _wm(c.watermark),
                    "final": c.final,
                    "retired": c.retired,
                    "sent": c.stats.get("sent", 0),
                    "reported_at": c.wall_time,
                }
            )
    return out


def _wm(w: int) -> int | str:
    return "none" if w == MIN_WATERMARK else "end" if w == MAX_WATERMARK else w


def _order(w: int | str) -> float:
    return float("-inf") if w == "none" else float("inf") if w == "end" else float(w)


def _lag_ms(now: int, w: int) -> int | None:
    return None if w in (MIN_WATERMARK, MAX_WATERMARK) else now - w


def _rate(table: WatermarkTable, pid: str) -> float:
    dq = table.entries.get(pid)
    if not dq or len(dq) < 2:
        return 0.0
    recent = [c for c in dq if c.wall_time >= dq[-1].wall_time - 10_000]
    first, last = recent[0], recent[-1]
    dt = (last.wall_time - first.wall_time) / 1000
    return (
        round((last.stats.get("processed", 0) - first.stats.get("processed", 0)) / dt, 1)
        if dt > 0
        else 0.0
    )


def _lag(pipeline: Pipeline, computation: str, cfg: WorkerConfig) -> dict[int, int]:
    """Records not yet committed by the computation's group, per partition."""
    conf = clients.base_config(cfg)
    conf.update({"group.id": pipeline.group_id(computation), "enable.auto.commit": False})
    c = Consumer(conf)
    try:
        tps = [
            TopicPartition(ti.topic, p)
            for ti in pipeline.task_inputs(computation)
            for p in range(pipeline.computations[computation].partitions)
        ]
        committed = c.committed(tps, timeout=cfg.startup_timeout_s)
        behind: dict[tuple[str, int], int] = {}
        starts: dict[tuple[str, int], int] = {}
        for tp in committed:
            _, high = c.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=cfg.startup_timeout_s
            )
            start = max(tp.offset, 0)
            if high > start:
                behind[(tp.topic, tp.partition)] = high - start
                starts[(tp.topic, tp.partition)] = start
    finally:
        c.close()
    # Offsets count transaction markers too: a partition whose only "records" past the
    # committed offset are markers is not behind. Read one record to tell.
    for marked in _only_markers(cfg, starts):
        behind.pop(marked)
    lag: dict[int, int] = {}
    for (_, p), n in behind.items():
        lag[p] = lag.get(p, 0) + n
    return lag


def _only_markers(cfg: WorkerConfig, starts: dict[tuple[str, int], int]) -> list[tuple[str, int]]:
    if not starts:
        return []
    r = Consumer(clients.reader_config(cfg))
    try:
        r.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        open_, empty = set(starts), []
        deadline = time.monotonic() + 5
        while open_ and time.monotonic() < deadline:
            for m in r.consume(100, 0.2):
                tp = (m.topic(), m.partition())
                if tp not in open_:
                    continue
                open_.discard(tp)
                if m.error() is not None:  # end of partition before any record
                    empty.append(tp)
        return empty
    finally:
        r.close()


def render(status: Status) -> str:
    """A human table: one line per computation, then its tasks."""
    now = status["time"]
    cols = (
        "lag",
        "low watermark",
        "wm lag",
        "rec/s",
        "processed",
        "dups",
        "late",
        "dead",
        "timers",
    )
    lines = [f"pipeline {status['pipeline']} at {_clock(now)}", ""]
    header = f"{'computation / task':<24}" + "".join(f"{c:>14}" for c in cols)
    lines += [header, "-" * len(header)]
    for comp in status["computations"]:
        lines.append(_row(comp["name"], comp))
        for t in comp["tasks"]:
            lines.append(_row(f"  [{t['partition']}]", t))
    if status["injectors"]:
        lines += ["", "injectors:"]
        for inj in status["injectors"]:
            lines.append(
                f"  {inj['producer']:<30} low watermark {_fmt_wm(inj['low_watermark'])}"
                f"  sent {inj['sent']}{_ended(inj)}"
            )
    return "\n".join(lines)


def _ended(inj: InjectorStatus) -> str:
    return "  (retired)" if inj["retired"] else "  (finished)" if inj["final"] else ""


def _row(label: str, d: ComputationStatus | TaskStatus) -> str:
    wl = d.get("watermark_lag_ms")
    cells = (
        d["lag"],
        _fmt_wm(d["low_watermark"]),
        "-" if wl is None else f"{wl / 1000:.1f}s",
        d["records_per_s"],
        d["processed"],
        d["duplicates"],
        d["late"],
        d["dead_lettered"],
        d["pending_timers"],
    )
    return f"{label:<24}" + "".join(f"{c!s:>14}" for c in cells)


def watermark_text(w: int) -> str:
    """A watermark as the table shows it: UTC time of day, ``none`` or ``end``."""
    return _fmt_wm(_wm(w))


def _fmt_wm(w: int | str | None) -> str:
    if w is None:
        return "unknown"
    return w if isinstance(w, str) else _clock(w)


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"
