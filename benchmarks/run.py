"""Run kwheel's benchmarks and print one JSON object per line per figure.

    .venv/bin/python -m benchmarks.run [--bootstrap HOST:PORT] [--records N] [--only FIGURE ...] [--profile]
    .venv/bin/python -m benchmarks [FIGURE ...] [options]      # the same; FIGURE ... is --only

Without ``--bootstrap`` an embedded broker (noida-db) is started on a free loopback port
and stopped at the end. Figures, one module each (docs/performance.md says what each
measures and how):

    throughput   exactly-once keyed count, 1 and 2 worker processes: processing-only and end-to-end records/s
    ceiling      a plain confluent-kafka transactional loop on the same data, and kwheel / plain
    latency      2,000 records/s for 20 s: output-visible minus send time, 1 and 3 stages
    watermark    wall clock minus low watermark per stage of the 3-stage pipeline
    restore      a fresh worker restoring 1,000,000 keys from a changelog
    memory       peak RSS (VmHWM) of the worker process(es) in every run above
    profile      (--profile) a one-process throughput run under py-spy: top functions

This module reads the options and runs what the wanted figures need, sharing runs between
figures (throughput's one-process run is also the ceiling's kwheel side; the paced runs
give latency and watermark). benchmarks/common.py holds what the figures share.

JSON goes to stdout, progress to stderr. Every wait is bounded, and every process started
here (broker, workers, plain loop, py-spy) is stopped on the way out, also on failure.
Worker settings come from the usual ``KWHEEL_*`` environment (inherited by the workers),
or ``--batch-size`` / ``--commit-interval-ms``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from confluent_kafka import KafkaException

from kwheel.errors import KwheelError

from . import ceiling, latency, memory, profiling, restore, throughput, watermark
from .common import Bench, BenchError, log

FIGURES = ("throughput", "ceiling", "latency", "watermark", "restore", "memory")
CHOICES = (*FIGURES, "profile")  # profile only when asked for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="kwheel benchmarks: one JSON line per figure."
    )
    ap.add_argument(
        "figures",
        nargs="*",
        metavar="FIGURE",
        help=f"run only these (as --only): {', '.join(CHOICES)}",
    )
    ap.add_argument(
        "--bootstrap", help="use this Kafka (host:port) instead of starting the embedded broker"
    )
    ap.add_argument(
        "--records",
        type=int,
        default=200_000,
        help="records pre-loaded for throughput and ceiling (200000)",
    )
    ap.add_argument(
        "--keys", type=int, default=10_000, help="distinct keys of the pre-loaded data (10000)"
    )
    ap.add_argument(
        "--zipf-s", type=float, default=1.0, help="Zipf exponent of the key distribution (1.0)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--only",
        nargs="+",
        choices=CHOICES,
        metavar="FIGURE",
        help=f"run only these: {', '.join(CHOICES)}",
    )
    ap.add_argument(
        "--rate", type=int, default=2000, help="records/s of the latency and watermark runs (2000)"
    )
    ap.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds of the paced runs (20)"
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds sent before measuring in the paced runs (2)",
    )
    ap.add_argument(
        "--restore-keys",
        type=int,
        default=1_000_000,
        help="keys in the restored changelog (1000000)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="an extra one-process throughput run under py-spy: top functions",
    )
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s (100)")
    ap.add_argument("--profile-top", type=int, default=20)
    ap.add_argument(
        "--batch-size",
        type=int,
        help="worker --batch-size (default: the worker's, or KWHEEL_BATCH_SIZE)",
    )
    ap.add_argument(
        "--commit-interval-ms", type=int, help="worker commit interval (default: the worker's)"
    )
    ap.add_argument(
        "--replication", type=int, default=1, help="replication factor of created topics (1)"
    )
    ap.add_argument(
        "--phase-timeout", type=float, default=600.0, help="bound on each run's wait (s)"
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="wait for the last outputs of a paced run (s)",
    )
    ap.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="wait for a worker to stop after SIGTERM (s)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, stores, profiles)"
    )
    args = ap.parse_args(argv)
    unknown = [f for f in args.figures if f not in CHOICES]
    if unknown:
        ap.error(f"unknown figure {unknown[0]!r} (choose from {', '.join(CHOICES)})")
    if args.figures:
        args.only = list(dict.fromkeys([*(args.only or []), *args.figures]))
    if args.only == ["memory"]:
        ap.error(
            "memory is measured in the other figures' runs: select them too (e.g. --only throughput memory)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    want = set(args.only or FIGURES)
    if args.profile:
        want.add("profile")

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="kwheel-bench-"))
    b: Bench | None = None
    broker = None
    ok = False
    try:
        if args.bootstrap:
            bootstrap, broker_desc = args.bootstrap, f"external {args.bootstrap}"
        else:
            from importlib.metadata import version

            from kwheel.testing.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=work / "broker").start()
            bootstrap = broker.bootstrap
            broker_desc = f"embedded noida-db {version('noida-db')}"
            log(f"embedded broker on {bootstrap} (pid {broker.proc.pid})")
        b = Bench(args, bootstrap, broker_desc, work)
        log(f"run {b.run_id}; work directory {work}")
        ok = run_all(b, want)
    except (BenchError, KwheelError, KafkaException, TimeoutError) as e:
        log(f"FAILED: {e}")
        if broker is not None and broker.proc is not None and broker.proc.poll() is not None:
            log(
                f"the embedded broker (pid {broker.proc.pid}) exited with {broker.proc.returncode} during the run: "
                f"stopped from outside? (log: {broker.log_path})"
            )
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
    finally:
        if b is not None:
            b.stop_all()
        if broker is not None:
            broker.stop()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")
    sys.exit(0 if ok else 1)


RUN_ERRORS = (BenchError, KwheelError, KafkaException, TimeoutError)


def run_all(b: Bench, want: set[str]) -> bool:
    """Run what the wanted figures need. A failed run prints its figure(s) with an "error"
    and the others go on (unless the broker is gone). True when every run succeeded."""
    n = b.args.records
    failed: list[str] = []

    def attempt(figures: list[str], unit: str, fn):
        try:
            return fn()
        except RUN_ERRORS as e:
            msg = f"{type(e).__name__}: {e}"
            log(f"run for {', '.join(figures)} FAILED: {msg}")
            failed.extend(figures)
            for f in figures:
                b.emit(f, None, unit, n, error=msg.splitlines()[0][:2000])
            if not b.broker_alive():
                raise BenchError("the broker is gone: stopping") from e
            return None

    if want & {"throughput", "ceiling", "profile"}:
        b.preload()  # without the data nothing else of these can run: a failure ends the run
    one = None
    if want & {"throughput", "ceiling"}:
        one = attempt(
            [f for f in ("throughput",) if f in want] or ["ceiling"],
            "records/s",
            lambda: throughput.measure(b, 1),
        )
        if one and "throughput" in want:
            throughput.emit_one(b, one)
    if "throughput" in want:
        two = attempt(["throughput"], "records/s", lambda: throughput.measure(b, 2))
        if two:
            throughput.emit_two(b, two, one)
    if "ceiling" in want:
        plain = attempt(["ceiling"], "records/s", lambda: ceiling.measure(b))
        if plain:
            ceiling.emit(b, plain, one)
    r1 = None
    if "latency" in want:
        r1 = attempt(["latency"], "ms", lambda: latency.measure(b, 1))
        if r1:
            latency.emit(b, r1)
    if want & {"latency", "watermark"}:
        r3 = attempt(
            [f for f in ("latency", "watermark") if f in want], "ms", lambda: latency.measure(b, 3)
        )
        if r3:
            if "latency" in want:
                latency.emit(b, r3)
            if "watermark" in want:
                watermark.emit(b, r3, r1)
    if "restore" in want:
        r = attempt(["restore"], "records/s, s", lambda: restore.measure(b))
        if r:
            restore.emit(b, r)
    if "profile" in want:
        pr = attempt(["profile"], "samples", lambda: profiling.measure(b))
        if pr:
            profiling.emit(b, pr)
    if "memory" in want:
        memory.emit(b)
    if failed:
        log(f"failed: {', '.join(dict.fromkeys(failed))}")
    return not failed


if __name__ == "__main__":
    main()
