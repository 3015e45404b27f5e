"""Worker configuration: defaults < TOML file < ``KWHEEL_*`` environment < flags; fail fast on bad values."""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

ENV_PREFIX = "KWHEEL_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # path of the TOML config file, unless --config gives one
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    # How a consumer group moves partitions when members come and go: "cooperative"
    # (incremental: only the partitions that must move stop) or "eager" (every member
    # lets go of every partition, and takes back what it is assigned again).
    rebalancing: str = "cooperative"
    # Seen record ids are forgotten once the input watermark passes their time plus this.
    dedup_horizon_ms: int = 3_600_000
    # Consumed repartition records are deleted this often (DeleteRecords); 0: never.
    repartition_purge_interval_ms: int = 30_000
    # Where to resume when the committed input offset is below the log start (records were
    # deleted before being processed): "earliest" (what is left), "latest", or "fail".
    offset_reset: str = "earliest"
    # How long to keep retrying an unreachable broker or missing topics before giving up.
    startup_timeout_s: float = 30.0
    # Logs go to stderr: at this level and up, as "text" lines or "json" objects (kwheel.logs).
    log_level: str = "INFO"
    log_format: str = "text"
    # Confluent schema registry of Avro serdes declared with registry=True (comma-separated
    # URLs allowed), and its basic auth as user:password (never printed, not in repr).
    schema_registry_url: str | None = None
    schema_registry_auth: str | None = field(default=None, repr=False)
    # Extra librdkafka settings passed to every client (security.protocol, sasl.*, ...).
    kafka: dict[str, str] = field(default_factory=dict)
    # Prometheus metrics of a worker on http://<metrics_host>:<metrics_port>/metrics.
    # None: no metrics server; 0: any free port (logged). Loopback only unless widened.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # /healthz on the metrics port answers 503 once the worker loop (or a restore) has made
    # no progress for this long.
    liveness_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        for name in (
            "batch_size",
            "commit_interval_ms",
            "transaction_timeout_ms",
            "session_timeout_ms",
            "dedup_horizon_ms",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _invalid(name, f"must be a positive integer, got {v!r}")
        rp = self.repartition_purge_interval_ms
        if not isinstance(rp, int) or isinstance(rp, bool) or rp < 0:
            raise _invalid(
                "repartition_purge_interval_ms",
                f"must be 0 (off) or a positive integer, got {rp!r}",
            )
        lt = self.liveness_timeout_s
        if not isinstance(lt, (int, float)) or isinstance(lt, bool) or not 0 < lt < float("inf"):
            raise _invalid("liveness_timeout_s", f"must be a positive number, got {lt!r}")
        t = self.startup_timeout_s
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < float("inf"):
            raise _invalid(
                "startup_timeout_s", f"must be a positive number, got {self.startup_timeout_s!r}"
            )
        if not self.bootstrap_servers or not all(
            ":" in b for b in self.bootstrap_servers.split(",")
        ):
            raise _invalid(
                "bootstrap_servers",
                f"expected host:port[,host:port], got {self.bootstrap_servers!r}",
            )
        if self.rebalancing not in ("cooperative", "eager"):
            raise _invalid("rebalancing", f"must be cooperative or eager, got {self.rebalancing!r}")
        if self.offset_reset not in ("earliest", "latest", "fail"):
            raise _invalid(
                "offset_reset", f"must be earliest, latest or fail, got {self.offset_reset!r}"
            )
        url = self.schema_registry_url
        if url is not None and not all(
            u.strip().startswith(("http://", "https://")) for u in url.split(",")
        ):
            from .registry import redact

            raise _invalid(
                "schema_registry_url", f"expected http(s)://host:port[,...], got {redact(url)!r}"
            )
        if self.schema_registry_auth is not None and ":" not in self.schema_registry_auth:
            raise _invalid("schema_registry_auth", "expected user:password (value not shown)")
        mp = self.metrics_port
        if mp is not None and (
            not isinstance(mp, int) or isinstance(mp, bool) or not 0 <= mp <= 65535
        ):
            raise _invalid(
                "metrics_port", f"must be a port number 0..65535 (0: any free port), got {mp!r}"
            )
        if not self.metrics_host or any(c.isspace() for c in self.metrics_host):
            raise _invalid(
                "metrics_host", f"must be a host name or address, got {self.metrics_host!r}"
            )
        if self.slot is not None and (not self.slot or any(c.isspace() for c in self.slot)):
            raise _invalid("slot", f"must be a non-empty name without spaces, got {self.slot!r}")
        if not isinstance(self.log_level, str) or self.log_level.upper() not in LOG_LEVELS:
            raise _invalid(
                "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        self.log_level = self.log_level.upper()
        if self.log_format not in ("text", "json"):
            raise _invalid("log_format", f"must be text or json, got {self.log_format!r}")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
        **overrides: object,
    ) -> WorkerConfig:
        """Defaults < config file < ``KWHEEL_<FIELD>`` environment < explicit overrides (flags).

        The file is ``config_file``, else ``KWHEEL_CONFIG`` from ``env``, else none."""
        return load(env, config_file, cls, **overrides)[0]


def load(
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    cls: type[WorkerConfig] | None = None,
    **overrides: object,
) -> tuple[WorkerConfig, dict[str, str]]:
    """The config, and where each value came from: field name (or ``kafka.<key>`` for a
    pass-through setting) -> ``default``, ``file``, ``env`` or ``flag``.

    Everything is derived from WorkerConfig's fields and their types, so a new field is
    read from the file and from ``KWHEEL_<FIELD>`` without further code."""
    cls = cls or WorkerConfig
    env = os.environ if env is None else env
    path = config_path(env, config_file)
    hints = get_type_hints(cls)
    values: dict[str, object] = {}
    sources: dict[str, str] = {f.name: "default" for f in fields(cls)}
    origin: dict[str, str] = {}  # field -> what set it, for error messages
    tables: dict[str, dict[str, str]] = {n: {} for n, t in hints.items() if get_origin(t) is dict}

    if path is not None:
        settings, file_tables = _read_file(path, hints)
        for name, table in file_tables.items():
            for k, v in table.items():
                tables[name][k] = v
                sources[f"{name}.{k}"] = "file"
        for name, value in settings.items():
            values[name], sources[name], origin[name] = (
                value,
                "file",
                f"config file {str(path)!r}",
            )

    env_names = {ENV_PREFIX + n.upper() for n in hints}
    for name, typ in hints.items():
        var = ENV_PREFIX + name.upper()
        if name in tables:
            prefix = var + "_"
            for k, v in env.items():
                if k.startswith(prefix) and k not in env_names:
                    key = k[len(prefix) :].lower().replace("_", ".")
                    tables[name][key] = str(v)
                    sources[f"{name}.{key}"] = "env"
        elif var in env:
            values[name] = _convert(typ, env[var], text=True, where=f"{var}={env[var]!r}")
            sources[name], origin[name] = "env", var
    if sources.get("kafka.bootstrap.servers") == "env":
        raise ConfigError("set KWHEEL_BOOTSTRAP_SERVERS, not KWHEEL_KAFKA_BOOTSTRAP_SERVERS")
    if sources.get("kafka.bootstrap.servers") == "file":
        raise ConfigError(
            f"config file {str(path)!r}: set bootstrap_servers, not bootstrap.servers in [kafka]"
        )
    values.update(tables)

    for name, value in overrides.items():
        if value is None:
            continue
        values[name] = value
        sources[name], origin[name] = "flag", "--" + name.replace("_", "-")
        if name in tables:  # a whole table from the caller replaces the file's and env's
            sources = {k: s for k, s in sources.items() if not k.startswith(name + ".")}
            # a table's override is a dict of settings (overrides are typed object)
            sources.update({f"{name}.{k}": "flag" for k in value})  # type: ignore[attr-defined]
    try:
        # each value is of its field's type (converted above, or the caller's): checked
        # by WorkerConfig.__post_init__, which mypy cannot see through **values
        return cls(**values), sources  # type: ignore[arg-type]
    except ConfigError as e:
        where = origin.get(e.field) if e.field else None
        raise ConfigError(f"{e} (from {where})" if where else str(e), field=e.field) from None


def _invalid(field: str, problem: str) -> ConfigError:
    """The error for a bad value of ``field``: it names the field, and says where the value
    came from once the caller knows (``load``)."""
    return ConfigError(f"config {field}: {problem}", field=field)


def config_path(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Path | None:
    """The config file to read: ``config_file`` (``--config``), else ``KWHEEL_CONFIG``, else none."""
    env = os.environ if env is None else env
    path = config_file if config_file is not None else env.get(CONFIG_ENV) or None
    return None if path is None else Path(path)


def _read_file(
    path: Path, hints: dict[str, object]
) -> tuple[dict[str, object], dict[str, dict[str, str]]]:
    """The settings of a TOML file, converted to the fields' types, and its tables of
    pass-through settings (``[kafka]``); any problem is a ConfigError naming the file, the
    key and what was expected."""
    where = f"config file {str(path)!r}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    out: dict[str, object] = {}
    tables: dict[str, dict[str, str]] = {}
    for name, value in data.items():
        typ = hints.get(name)
        if typ is None:
            close = difflib.get_close_matches(name, hints, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(hints)
            raise ConfigError(f"{where}: unknown key {name!r} ({hint})")
        if get_origin(typ) is dict:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: {name} must be a table ([{name}]), got {json.dumps(value, default=str)}"
                )
            tables[name] = {
                k: _table_value(v, f"{where}: {name}.{k}") for k, v in _flatten(value).items()
            }
        else:
            out[name] = _convert(
                typ, value, text=False, where=f"{where}: {name} = {json.dumps(value, default=str)}"
            )
    return out, tables


def _flatten(table: dict[str, object], prefix: str = "") -> dict[str, object]:
    """``security.protocol = ...`` in TOML is a nested table; librdkafka wants the dotted name."""
    out: dict[str, object] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _table_value(value: object, where: str) -> str:
    """Pass-through settings are strings for librdkafka; TOML numbers and booleans are accepted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(
        f"{where} = {json.dumps(value, default=str)}: expected a string, number or boolean"
    )


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


_NUMBERS: dict[type, tuple[type | tuple[type, ...], str]] = {
    int: (int, "an integer"),
    float: ((int, float), "a number"),
}  # type -> (TOML types taken, name)


def _convert(typ: object, value: object, *, text: bool, where: str) -> object:
    """``value`` as ``typ`` (int, float, bool, str, Path, or one of them ``| None``).
    Environment values are text (``text=True``; empty means None for optional fields);
    file values are TOML-typed and must match."""
    if get_origin(typ) in (UnionType, Union):
        inner = [a for a in get_args(typ) if a is not type(None)]
        if text and value == "":
            return None
        typ = inner[0]
    if text:
        value = str(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false")
    if typ in _NUMBERS:
        accepted, name = _NUMBERS[typ]
        if text:
            try:
                return typ(value)
            except ValueError:
                raise ConfigError(f"{where}: expected {name}") from None
        if isinstance(value, accepted) and not isinstance(value, bool):
            return typ(value)
        raise ConfigError(f"{where}: expected {name}")
    if typ in (str, Path):
        if isinstance(value, str):
            return typ(value)
        raise ConfigError(f"{where}: expected a string")
    raise TypeError(f"WorkerConfig field of unsupported type {typ!r}")  # a programming error


# ---- showing the config ---------------------------------------------------------------------

MASK = "***"
_SECRET_WORDS = (
    "password",
    "secret",
    "token",
    "credential",
    "jaas",
    "basic.auth",
    "registry.auth",
    "user.info",
    "userinfo",
)


def is_secret(name: str) -> bool:
    """Whether a setting's value must not be shown: passwords, secrets, tokens, private keys
    (``ssl.key.*``), OAUTHBEARER settings, schema-registry basic auth, JAAS configs."""
    n = name.lower().replace("_", ".")
    return (
        any(w in n for w in _SECRET_WORDS)
        or "key" in n.split(".")
        or n.startswith("sasl.oauthbearer")
        or ".sasl.oauthbearer" in n
    )


def masked(name: str, value: object) -> object:
    """``value`` fit to print: secrets replaced by ``***``, and the password of a URL's
    ``user:password@`` too."""
    if value is None:
        return None
    if is_secret(name):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1" + MASK + "@", value)
    return value


_URL_PASSWORD = re.compile(r"(\w+://[^/@:\s]*:)[^/@\s]*@")


def describe(cfg: WorkerConfig, sources: dict[str, str]) -> dict[str, dict[str, object]]:
    """Every setting with its value (masked, JSON-friendly) and source, in field order;
    pass-through tables flattened to ``kafka.<key>``."""
    out: dict[str, dict[str, object]] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, dict):
            for k in sorted(value):
                full = f"{f.name}.{k}"
                out[full] = {"value": masked(k, value[k]), "source": sources.get(full, "default")}
            continue
        shown = str(value) if isinstance(value, Path) else value
        out[f.name] = {"value": masked(f.name, shown), "source": sources.get(f.name, "default")}
    return out
