"""kwheel: Google's MillWheel model on Kafka.

A pipeline is a graph of computations joined by named streams. Each computation sees one
key at a time, with persistent per-key state, and every input record affects state and
outputs exactly once (Kafka transactions + a RocksDB store rebuilt from a changelog).
"""

from .computation import Computation, Context, State
from .errors import KwheelError
from .pipeline import Input, Pipeline, Stream
from .record import Key, Record, Timer
from .serde import BYTES, JSON, STR, AvroSerde, Serde
from .watermarks import MAX_WATERMARK, MIN_WATERMARK  # ctx.low_watermark: none yet / input ended
from .windows import Session, Sliding, Tumbling, Window, WindowedAggregation

__all__ = [
    "AvroSerde",
    "BYTES",
    "Computation",
    "Context",
    "Input",
    "JSON",
    "Key",
    "KwheelError",
    "MAX_WATERMARK",
    "MIN_WATERMARK",
    "Pipeline",
    "Record",
    "STR",
    "Serde",
    "Session",
    "Sliding",
    "State",
    "Stream",
    "Timer",
    "Tumbling",
    "Window",
    "WindowedAggregation",
]
__version__ = "0.1.0"
