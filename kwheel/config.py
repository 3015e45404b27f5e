"""Worker configuration: defaults, ``KWHEEL_*`` environment variables, flags; fail fast on bad values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

ENV_PREFIX = "KWHEEL_"


@dataclass
class WorkerConfig:
    bootstrap_servers: str = "localhost:9092"
    state_dir: Path = Path("./kwheel-state")
    # Stable identity of this worker process: static group.instance.id, so a restarted
    # slot takes its partitions back at once. None joins consumer groups dynamically.
    slot: str | None = None
    # A transaction closes after this many input records per task or this much time.
    batch_size: int = 5000
    commit_interval_ms: int = 100
    transaction_timeout_ms: int = 60000
    session_timeout_ms: int = 10000
    # Seen record ids are forgotten once the input watermark passes their time plus this.
    dedup_horizon_ms: int = 3_600_000
    # Where to resume when the committed input offset is below the log start (records were
    # deleted before being processed): "earliest" (what is left), "latest", or "fail".
    offset_reset: str = "earliest"
    # How long to keep retrying an unreachable broker or missing topics before giving up.
    startup_timeout_s: float = 30.0
    # Extra librdkafka settings passed to every client (security.protocol, sasl.*, ...).
    kafka: dict[str, str] = field(default_factory=dict)
    # Prometheus metrics of a worker on http://<metrics_host>:<metrics_port>/metrics.
    # None: no metrics server; 0: any free port (logged). Loopback only unless widened.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        for name in ("batch_size", "commit_interval_ms", "transaction_timeout_ms", "session_timeout_ms", "dedup_horizon_ms"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"config {name}: must be a positive integer, got {v!r}")
        t = self.startup_timeout_s
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < float("inf"):
            raise ConfigError(f"config startup_timeout_s: must be a positive number, got {self.startup_timeout_s!r}")
        if not self.bootstrap_servers or not all(":" in b for b in self.bootstrap_servers.split(",")):
            raise ConfigError(f"config bootstrap_servers: expected host:port[,host:port], got {self.bootstrap_servers!r}")
        if self.offset_reset not in ("earliest", "latest", "fail"):
            raise ConfigError(f"config offset_reset: must be earliest, latest or fail, got {self.offset_reset!r}")
        mp = self.metrics_port
        if mp is not None and (not isinstance(mp, int) or isinstance(mp, bool) or not 0 <= mp <= 65535):
            raise ConfigError(f"config metrics_port: must be a port number 0..65535 (0: any free port), got {mp!r}")
        if not self.metrics_host or any(c.isspace() for c in self.metrics_host):
            raise ConfigError(f"config metrics_host: must be a host name or address, got {self.metrics_host!r}")
        if self.slot is not None and (not self.slot or any(c.isspace() for c in self.slot)):
            raise ConfigError(f"config slot: must be a non-empty name without spaces, got {self.slot!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> WorkerConfig:
        """Defaults < ``KWHEEL_<FIELD>`` environment < explicit overrides (flags)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or f.name == "kafka":
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        kafka = {
            k[len(ENV_PREFIX + "KAFKA_"):].lower().replace("_", "."): v
            for k, v in env.items()
            if k.startswith(ENV_PREFIX + "KAFKA_")
        }
        if "bootstrap.servers" in kafka:
            raise ConfigError("set KWHEEL_BOOTSTRAP_SERVERS, not KWHEEL_KAFKA_BOOTSTRAP_SERVERS")
        values["kafka"] = kafka
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, raw: str, typ: object) -> object:
    t = str(typ)
    try:
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected a number") from None
    return raw
