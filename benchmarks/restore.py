"""Figure 5, ``restore``: a keyed count's changelog for ``--restore-keys`` keys is written
straight into its topic in the store's layout (kwheel/state/layout.py), then a fresh worker
with an empty state directory restores it. records/s = changelog records restored over the
seconds the tasks spent restoring (from the worker's stats file: each task's ``restored``
event), and the time from starting the worker to all its tasks ready.

    .venv/bin/python -m benchmarks.restore [--restore-keys N] [options of benchmarks.run]
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import Producer

from kwheel.ids import new_id
from kwheel.kafka import clients
from kwheel.kafka.partitioner import partition_for
from kwheel.state import layout

from . import memory
from .common import PARTITIONS, Bench, BenchError, log, tail, wait_for
from .pipelines import keyed_count

FIGURE = "restore"


def measure(b: Bench) -> dict:
    """Write a keyed count's changelog for ``--restore-keys`` keys straight into its
    topic (the store layout, as the worker would have written it), then time a fresh
    worker restoring it."""
    k = b.args.restore_keys
    label = "restore"
    name = b.name(label)
    p = keyed_count(name)
    b.setup_topics(p)
    topic = p.changelog_topic("counter")
    t0 = time.monotonic()
    written = write_changelog(b, p, topic, k)
    build_s = time.monotonic() - t0
    log(f"restore: wrote {written} changelog records ({k} keys) to {topic} in {build_s:.1f}s")
    started = time.monotonic()
    w = b.start_worker("benchmarks.pipelines:keyed_count", name, label)
    try:
        wait_for(
            lambda: len(w.task_events("ready")) >= PARTITIONS,
            b.args.phase_timeout,
            "restored tasks ready",
            0.1,
            w,
        )
        ready_s = time.monotonic() - started
        mem = memory.worker_rss(b, w, 1, label)
    finally:
        b.stop_worker(w)
    found = [
        (e["counters"]["restored"], e["seconds"])
        for e in w.task_events("restored")
        if e["counters"]["restored"]
    ]
    n, secs = sum(x for x, _ in found), sum(s for _, s in found)
    if n < written:
        raise BenchError(f"restore: the worker restored {n} records of {written}{tail(w)}")
    r = {
        "keys": k,
        "changelog_records": n,
        "restore_s": round(secs, 2),
        "records_per_s": round(n / secs) if secs > 0 else None,
        "keys_per_s": round(k / secs) if secs > 0 else None,
        "tasks": len(found),
        "per_task_s": [round(s, 2) for _, s in found],
        "worker_start_to_ready_s": round(ready_s, 2),
        "changelog_build_s": round(build_s, 1),
        "memory": mem,
    }
    log(
        f"restore: {n} records in {secs:.2f}s ({r['records_per_s']} rec/s); ready after {ready_s:.1f}s"
    )
    return r


def emit(b: Bench, r: dict) -> None:
    b.emit(
        FIGURE,
        {"records_per_s": r["records_per_s"], "seconds": r["restore_s"]},
        "records/s, s",
        r["changelog_records"],
        keys=r["keys"],
        detail=r,
    )


def _produce(prod: Producer, topic: str, key: bytes, value: bytes, partition: int) -> None:
    while True:
        try:
            prod.produce(topic, value, key, partition=partition)
            return
        except BufferError:
            prod.poll(0.05)


def write_changelog(b: Bench, pipeline, topic: str, keys: int) -> int:
    """What running the keyed count over ``keys`` distinct keys in batches of 5000 per
    task leaves in its changelog: per key its state ``{"count": 1}``, and per batch one
    record of the batch's input ids. Committed in transactions (restore reads
    read_committed). Keys go to the partition their records would hash to."""
    conf = clients.base_config(b.cfg)
    conf.update(
        {
            "transactional.id": f"{pipeline.name}.bench-writer",
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    prod = Producer(conf)
    prod.init_transactions(30)
    state = layout.encode_state({"count": 1})
    per_part: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
    for i in range(keys):
        key = f"r{i:07d}"
        per_part[partition_for(key.encode(), PARTITIONS)].append(layout.state_key(key))
    batch = 5000
    written = in_txn = 0
    ts = int(time.time() * 1000)
    prod.begin_transaction()
    for part, skeys in enumerate(per_part):
        for bn, start in enumerate(range(0, len(skeys), batch)):
            chunk = skeys[start : start + batch]
            for sk in chunk:
                _produce(prod, topic, sk, state, part)
            _produce(
                prod,
                topic,
                layout.id_batch_key(bn),
                layout.encode_id_batch({new_id(): ts for _ in chunk}),
                part,
            )
            written += len(chunk) + 1
            in_txn += len(chunk) + 1
            if in_txn >= 100_000:
                prod.commit_transaction(60)
                prod.begin_transaction()
                in_txn = 0
    prod.commit_transaction(60)
    left = prod.flush(30)
    if left:
        raise BenchError(f"restore: {left} changelog records not delivered")
    return written


if __name__ == "__main__":
    from .run import main

    main(["--only", FIGURE, *sys.argv[1:]])
