"""Pipelines whose input is Avro in the Confluent wire format, through a schema registry
(KWHEEL_SCHEMA_REGISTRY_URL), read with reader schema v2 (schemas/event_v2.avsc)."""

import os
from pathlib import Path

from kwheel import AvroSerde, Computation, Pipeline

SCHEMAS = Path(__file__).resolve().parent / "schemas"


class TierCounter(Computation):
    """Counts per key and passes on the record's seq and tier (a field added in v2)."""

    def process_record(self, ctx, record):
        n = ctx.state.get("count", 0) + 1
        ctx.state["count"] = n
        v = record.value
        ctx.produce(
            "counts",
            ctx.key,
            {"key": ctx.key, "count": n, "seq": v["seq"], "tier": v["tier"]},
            record.timestamp,
        )


def _pipeline(name: str | None, counts: object, dead_letter: bool = False) -> Pipeline:
    p = Pipeline(name or os.environ.get("KWHEEL_TEST_PIPELINE", "avro"))
    p.stream(
        "events",
        partitions=2,
        value=AvroSerde(SCHEMAS / "event_v2.avsc", registry=True),
        source=True,
    )
    p.stream("counts", partitions=2, value=counts)
    if dead_letter:
        p.stream("dead", partitions=1, value="bytes")
    p.computation(
        "counter",
        TierCounter,
        inputs=["events"],
        outputs=["counts"],
        dead_letter="dead" if dead_letter else None,
    )
    return p


def avro_evolve(name: str | None = None) -> Pipeline:
    """Avro in (reader v2) and Avro out (count.avsc), both through the registry."""
    return _pipeline(name, f"avro+registry:{SCHEMAS / 'count.avsc'}")


def avro_strict(name: str | None = None) -> Pipeline:
    """Avro in, JSON counts out; bad input stops the worker (the default policy)."""
    return _pipeline(name, "json")


def avro_dlq(name: str | None = None) -> Pipeline:
    """Avro in, JSON counts out; bad input goes to the dead-letter stream ``dead``."""
    return _pipeline(name, "json", dead_letter=True)
