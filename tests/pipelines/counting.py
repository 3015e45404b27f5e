"""Pipelines for the integration tests; the name comes from KWHEEL_TEST_PIPELINE so every
test gets fresh topics and consumer groups."""

import os
import time

from kwheel import Computation, Input, Pipeline


class Counter(Computation):
    output = "counts"

    def process_record(self, ctx, record):
        n = ctx.state.get("count", 0) + 1
        ctx.state["count"] = n
        ctx.produce(self.output, ctx.key, {"key": ctx.key, "count": n}, record.timestamp)


class BucketCounter(Counter):
    output = "buckets"


class Flaky(Counter):
    """Counts, but raises on records whose value has ``"poison": true`` (unless the test
    sets KWHEEL_TEST_CURED, standing in for a fixed deployment)."""

    def process_record(self, ctx, record):
        if record.value.get("poison") and not os.environ.get("KWHEEL_TEST_CURED"):
            raise ValueError(f"poisoned record {record.value.get('seq')}")
        if record.value.get("bloat"):  # an output far larger than the broker takes
            ctx.produce("counts", ctx.key, {"key": ctx.key, "blob": "x" * 2_000_000})
        if record.value.get("hoard"):  # state that grows by this many bytes a record
            ctx.state["hoard"] = ctx.state.get("hoard", "") + "x" * record.value["hoard"]
        super().process_record(ctx, record)


class Sluggish(Counter):
    """Counts, but the first call on a record with ``"slow": <seconds>`` sleeps that long: a
    user function slower than the transaction timeout, once (the marker file remembers)."""

    def process_record(self, ctx, record):
        each = float(os.environ.get("KWHEEL_TEST_SECONDS_PER_RECORD", "0"))
        if each:  # every record slow: a full batch outlasts the transaction timeout
            time.sleep(each)
        mark = os.environ.get("KWHEEL_TEST_SLOW_MARK")
        if record.value.get("slow") and mark and not os.path.exists(mark):
            open(mark, "w").close()
            time.sleep(record.value["slow"])
        super().process_record(ctx, record)


def _name() -> str:
    return os.environ.get("KWHEEL_TEST_PIPELINE", "counting")


def keyed_count(name: str | None = None, partitions: int = 4) -> Pipeline:
    """events (source, keyed by user) -> counter -> counts."""
    p = Pipeline(name or _name())
    p.stream("events", partitions=partitions, value="json", source=True)
    p.stream("counts", partitions=partitions, value="json")
    p.computation("counter", Counter, inputs=["events"], outputs=["counts"])
    return p


def rekeyed_count(name: str | None = None) -> Pipeline:
    """events keyed by user, counted per country: the counter re-keys through a repartition topic."""
    p = Pipeline(name or _name())
    p.stream("events", partitions=4, value="json", source=True)
    p.stream("counts", partitions=3, value="json")
    p.computation(
        "counter",
        Counter,
        inputs=[Input("events", key_by=lambda r: r.value["country"])],
        outputs=["counts"],
        partitions=3,
    )
    return p


def flaky_count(name: str | None = None) -> Pipeline:
    """Like keyed_count, but the counter raises on poisoned records (stop policy)."""
    p = Pipeline(name or _name())
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("counts", partitions=2, value="json")
    p.computation("counter", Flaky, inputs=["events"], outputs=["counts"])
    return p


def flaky_count_dlq(name: str | None = None) -> Pipeline:
    """The flaky counter with a dead-letter stream: poisoned records are set aside."""
    p = Pipeline(name or _name())
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("counts", partitions=2, value="json")
    p.stream("dead", partitions=1, value="bytes")
    p.computation("counter", Flaky, inputs=["events"], outputs=["counts"], dead_letter="dead")
    return p


def keyed_count_one_partition(name: str | None = None) -> Pipeline:
    """keyed_count on a single partition (for tests that delete records at one position)."""
    return keyed_count(name, partitions=1)


def sluggish_count(name: str | None = None) -> Pipeline:
    """keyed_count whose counter is once slower than the transaction timeout."""
    p = Pipeline(name or _name())
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("counts", partitions=2, value="json")
    p.computation("counter", Sluggish, inputs=["events"], outputs=["counts"])
    return p


def mixed_count(name: str | None = None) -> Pipeline:
    """One counter fed directly by ``a`` (keyed by user) and re-keyed from ``b`` (by the
    value's ``user``): both must reach the same task for a key, so each key has one count."""
    p = Pipeline(name or _name())
    p.stream("a", partitions=4, value="json", source=True)
    p.stream("b", partitions=3, value="json", source=True)
    p.stream("counts", partitions=4, value="json")
    p.computation(
        "counter",
        Counter,
        inputs=["a", Input("b", key_by=lambda r: r.value["user"])],
        outputs=["counts"],
    )
    return p


def bucket_of(user: str) -> str:
    return f"b{int(user[1:]) % 16}"


def scaled_count(name: str | None = None, partitions: int = 32) -> Pipeline:
    """Two stages of ``partitions`` each, for the scaling test: ``counter`` counts per user
    from ``a`` and ``b`` (both keyed by user), so its tasks read two topics; ``bucketer``
    counts those counts per bucket of users, through a repartition topic."""
    p = Pipeline(name or _name())
    p.stream("a", partitions=partitions, value="json", source=True)
    p.stream("b", partitions=partitions, value="json", source=True)
    p.stream("counts", partitions=partitions, value="json")
    p.stream("buckets", partitions=partitions, value="json")
    p.computation(
        "counter",
        Counter,
        inputs=["a", "b"],
        outputs=["counts"],
    )
    p.computation(
        "bucketer",
        BucketCounter,
        inputs=[Input("counts", key_by=lambda r: bucket_of(r.value["key"]))],
        outputs=["buckets"],
        partitions=partitions,
    )
    return p
