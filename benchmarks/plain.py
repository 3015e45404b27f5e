"""The ceiling: a plain confluent-kafka exactly-once loop over the same data and broker.

    python -m benchmarks.plain --bootstrap HOST:PORT --input TOPIC --output TOPIC --expect N

Consume read_committed (a consumer-group member), count per key in a dict, produce the
count, and every 100 ms commit a transaction that carries the consumed offsets
(``send_offsets_to_transaction``). No state store, no changelog, no record ids, no dedup,
no watermarks: what kwheel adds on top of this is what the ratio kwheel / plain measures.

Exits once it committed ``--expect`` input offsets (or at ``--timeout``), printing one
JSON line with its own timings and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

COMMIT_INTERVAL_S = 0.1


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """VmHWM of a live process (KiB), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--transactional-id", required=True)
    ap.add_argument(
        "--expect", type=int, required=True, help="stop after committing this many input offsets"
    )
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    started = time.monotonic()
    deadline = started + args.timeout
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": args.transactional_id,
            "enable.idempotence": True,
            "log_level": 3,
        }
    )
    producer.init_transactions(30)
    consumer.subscribe([args.input])
    producer.begin_transaction()
    counts: dict[bytes, int] = {}
    offsets: dict[int, int] = {}
    committed = consumed = commits = 0
    first_record = last_commit_done = first_commit = None  # first_commit: (time, offsets committed)
    last_commit = time.monotonic()
    dirty = False
    produce, out, dumps = producer.produce, args.output, orjson.dumps
    try:
        while committed < args.expect and not stop:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"plain loop: committed {committed} of {args.expect} in {args.timeout:g}s"
                )
            msgs = consumer.consume(10000, 0.1)
            for m in msgs:
                if m.error() is not None:
                    continue
                if first_record is None:
                    first_record = time.monotonic()
                k = m.key()
                n = counts.get(k, 0) + 1
                counts[k] = n
                p = m.partition()
                v = dumps({"key": k.decode(), "count": n})
                while True:
                    try:
                        produce(out, v, k, partition=p, timestamp=m.timestamp()[1])
                        break
                    except BufferError:
                        producer.poll(0.05)
                offsets[p] = m.offset() + 1
                consumed += 1
                dirty = True
            if dirty and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                tps = [TopicPartition(args.input, p, o) for p, o in offsets.items()]
                producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
                producer.begin_transaction()
                committed = sum(offsets.values())
                commits += 1
                last_commit = last_commit_done = time.monotonic()
                if first_commit is None:
                    first_commit = (last_commit_done, committed)
                dirty = False
    except KafkaException as e:
        print(f"plain loop failed: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            producer.abort_transaction(10)
        except KafkaException:
            pass
        consumer.close()
    result = {
        "consumed": consumed,
        "committed": committed,
        "commits": commits,
        "keys": len(counts),
        "startup_s": None if first_record is None else round(first_record - started, 3),
        "processing_s": None
        if first_record is None or last_commit_done is None
        else round(last_commit_done - first_record, 3),
        "total_s": round(time.monotonic() - started, 3),
        "peak_rss_kib": peak_rss_kib(),
        # kwheel's processing-only definition, with exact times: records committed after the
        # first commit, over the time from the first commit to the last
        "processing_rps": None,
    }
    if first_commit is not None and last_commit_done > first_commit[0]:
        result["processing_rps"] = round(
            (committed - first_commit[1]) / (last_commit_done - first_commit[0])
        )
        result["processing_window_s"] = round(last_commit_done - first_commit[0], 3)
    print(json.dumps(result), flush=True)
    return 0 if committed >= args.expect else 2


if __name__ == "__main__":
    sys.exit(main())
