"""CPU cost of the task hot path alone, without a broker: records per CPU-second.

A real ``Task`` (real RocksDB store, real context, real commit bookkeeping) is fed in-memory
messages; its producer and consumer are stand-ins that only count. This isolates kwheel's
own Python work per record from librdkafka and the broker, so optimisations of the hot path
can be measured on a busy machine (CPU time, not wall time). Prints one JSON object.

    .venv/bin/python -m benchmarks.hotpath [--records N] [--keys N] [--batch N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.pipelines import keyed_count
from kwheel import ids
from kwheel.config import WorkerConfig
from kwheel.kafka.writer import ID_HEADER
from kwheel.runtime.task import Task


class _Message:
    __slots__ = ("_t", "_p", "_o", "_k", "_v", "_ts", "_h")

    def __init__(self, t, p, o, k, v, ts, h):
        self._t, self._p, self._o, self._k, self._v, self._ts, self._h = t, p, o, k, v, ts, h

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def timestamp(self):
        return (1, self._ts)

    def headers(self):
        return self._h

    def error(self):
        return None


class _Producer:
    """Counts what it is given; delivers the last changelog record at commit."""

    def __init__(self):
        self.produced = 0
        self._cb = None
        self._n = 0

    def produce(
        self, topic, value=None, key=None, partition=-1, timestamp=0, headers=None, on_delivery=None
    ):
        self.produced += 1
        self._n += 1
        if on_delivery is not None:
            self._cb = on_delivery

    def init_transactions(self, *a):
        pass

    def begin_transaction(self):
        pass

    def send_offsets_to_transaction(self, *a):
        pass

    def abort_transaction(self, *a):
        pass

    def commit_transaction(self, *a):
        if self._cb is not None:
            cb, self._cb = self._cb, None
            cb(None, _Message("", 0, self._n, None, None, 0, None))

    def flush(self, *a):
        return 0

    def poll(self, *a):
        return 0


class _Consumer:
    def consumer_group_metadata(self):
        return None

    def seek(self, tp):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile instead")
    a = ap.parse_args()
    rng = random.Random(1)
    weights = [1 / r for r in range(1, a.keys + 1)]
    keys = rng.choices([f"k{i:05d}".encode() for i in range(a.keys)], weights, k=a.records)
    pipeline = keyed_count("hotpath")
    topic = pipeline.streams["events"].topic
    msgs = [
        _Message(
            topic,
            0,
            i,
            k,
            orjson.dumps({"user": k.decode(), "ts": 1_700_000_000_000 + i, "seq": i, "v": "007b"}),
            1_700_000_000_000 + i,
            [(ID_HEADER, ids.new_id())],
        )
        for i, k in enumerate(keys)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        task = Task(
            pipeline,
            pipeline.computations["counter"],
            0,
            WorkerConfig(state_dir=Path(tmp)),
            _Consumer(),
            make_producer=lambda conf: _Producer(),
        )
        task.fence(1, fence_from=1)
        task.start()

        def run():
            for i in range(0, len(msgs), a.batch):
                task.process(msgs[i : i + a.batch])
                task.commit()

        if a.profile:
            import cProfile

            cProfile.runctx("run()", globals(), locals(), sort="tottime")
            return
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        task.store.close()
    print(
        json.dumps(
            {
                "figure": "hotpath",
                "records": a.records,
                "keys": a.keys,
                "batch": a.batch,
                "records_per_cpu_s": round(a.records / cpu),
                "records_per_wall_s": round(a.records / wall),
                "us_per_record_cpu": round(cpu * 1e6 / a.records, 2),
                "processed": task.counters.processed,
            }
        )
    )


if __name__ == "__main__":
    main()
