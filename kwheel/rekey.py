"""The re-keying stage kwheel adds for a computation that re-keys a source stream.

A computation that re-keys a stream (``Input(stream, key_by=...)``) reads a repartition
topic keyed as it wants. For a stream the pipeline writes itself, the producing tasks write
that topic too, in the same transaction. A source stream is written by injectors and by
producers outside kwheel, which know nothing of repartition topics: so kwheel adds a stage
``<computation>.rekey.<stream>`` that reads the stream's own topic, dedups it by record id
like every source, and writes each record under its new key to the repartition topic,
exactly once and with watermarks, as Kafka Streams' repartition sub-topologies do. Every
record of the stream reaches the computation, whoever wrote it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .computation import Computation
from .record import Key, Record
from .state.layout import key_from_tag, key_tag

if TYPE_CHECKING:
    from .computation import Context
    from .pipeline import KeyExtractor


def stage_name(computation: str, stream: str) -> str:
    """The name of the stage (and of the internal stream it writes)."""
    return f"{computation}.rekey.{stream}"


class Rekey(Computation):
    """Passes each record on to ``out`` under the key ``key_by`` picks; keeps no state."""

    def __init__(self, key_by: KeyExtractor, out: str):
        self.key_by = key_by
        self.out = out

    def process_record(self, ctx: Context, record: Record) -> None:
        ctx.produce(self.out, self.key_by(record), record.value, record.timestamp)


class TagSerde:
    """Keys of repartition topics: the key's tag, so its type (str or bytes) survives."""

    name = "tag"

    def encode(self, obj: object) -> bytes:
        # a Serde takes any object; key_tag itself raises TypeError for one not str or bytes
        return key_tag(obj)  # type: ignore[arg-type]

    def decode(self, data: bytes) -> Key:
        return key_from_tag(data)
