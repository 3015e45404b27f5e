"""WorkerConfig: validation, and defaults < KWHEEL_* environment < overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwheel.config import WorkerConfig
from kwheel.errors import ConfigError


def test_defaults_are_valid():
    cfg = WorkerConfig()
    assert cfg.bootstrap_servers == "localhost:9092"
    assert cfg.state_dir == Path("./kwheel-state")
    assert cfg.slot is None
    assert cfg.batch_size == 5000
    assert cfg.kafka == {}


def test_state_dir_string_becomes_path():
    assert WorkerConfig(state_dir="/tmp/x").state_dir == Path("/tmp/x")


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["batch_size", "commit_interval_ms", "transaction_timeout_ms", "session_timeout_ms"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_integer_settings_must_be_positive_integers(name, bad):
    with pytest.raises(ConfigError, match=rf"config {name}: must be a positive integer, got {bad!r}"):
        WorkerConfig(**{name: bad})


@pytest.mark.parametrize("bad", [0, -2.5, "30"])
def test_startup_timeout_must_be_a_positive_number(bad):
    with pytest.raises(ConfigError, match=r"config startup_timeout_s: must be a positive number"):
        WorkerConfig(startup_timeout_s=bad)


def test_startup_timeout_accepts_int_and_float():
    assert WorkerConfig(startup_timeout_s=2).startup_timeout_s == 2
    assert WorkerConfig(startup_timeout_s=0.5).startup_timeout_s == 0.5


# regression: `<= 0` is False for NaN (config.py)
def test_startup_timeout_nan_is_rejected():
    with pytest.raises(ConfigError, match=r"startup_timeout_s"):
        WorkerConfig.from_env({"KWHEEL_STARTUP_TIMEOUT_S": "nan"})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, 0, -1.0])
def test_startup_timeout_must_be_a_finite_positive_number(bad):
    with pytest.raises(ConfigError, match=r"config startup_timeout_s: must be a positive number"):
        WorkerConfig(startup_timeout_s=bad)


@pytest.mark.parametrize("bad", ["", "localhost", "a:1,b", "a:1,"])
def test_bootstrap_servers_must_be_host_port_list(bad):
    with pytest.raises(ConfigError, match=r"config bootstrap_servers: expected host:port\[,host:port\]"):
        WorkerConfig(bootstrap_servers=bad)


def test_bootstrap_servers_accepts_several_brokers():
    assert WorkerConfig(bootstrap_servers="a:1,b:2").bootstrap_servers == "a:1,b:2"


@pytest.mark.parametrize("bad", ["", "node 1", "tab\there"])
def test_slot_must_be_non_empty_without_spaces(bad):
    with pytest.raises(ConfigError, match=r"config slot: must be a non-empty name without spaces"):
        WorkerConfig(slot=bad)


def test_slot_name_is_kept():
    assert WorkerConfig(slot="node1-0").slot == "node1-0"


# ---- from_env ----------------------------------------------------------------------------------


def test_from_env_empty_gives_defaults():
    assert WorkerConfig.from_env({}) == WorkerConfig()


def test_from_env_reads_every_field():
    cfg = WorkerConfig.from_env(
        {
            "KWHEEL_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "KWHEEL_STATE_DIR": "/var/kwheel",
            "KWHEEL_SLOT": "node7",
            "KWHEEL_BATCH_SIZE": "10",
            "KWHEEL_COMMIT_INTERVAL_MS": "20",
            "KWHEEL_TRANSACTION_TIMEOUT_MS": "30000",
            "KWHEEL_SESSION_TIMEOUT_MS": "6000",
            "KWHEEL_STARTUP_TIMEOUT_S": "1.5",
        }
    )
    assert cfg.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.state_dir == Path("/var/kwheel")
    assert cfg.slot == "node7"
    assert cfg.batch_size == 10
    assert cfg.commit_interval_ms == 20
    assert cfg.transaction_timeout_ms == 30000
    assert cfg.session_timeout_ms == 6000
    assert cfg.startup_timeout_s == 1.5


def test_env_overrides_defaults():
    assert WorkerConfig.from_env({"KWHEEL_BATCH_SIZE": "7"}).batch_size == 7


def test_overrides_beat_env():
    cfg = WorkerConfig.from_env({"KWHEEL_BATCH_SIZE": "7", "KWHEEL_SLOT": "env-slot"}, batch_size=9, slot="flag-slot")
    assert cfg.batch_size == 9
    assert cfg.slot == "flag-slot"


def test_none_override_does_not_hide_env():
    cfg = WorkerConfig.from_env({"KWHEEL_BATCH_SIZE": "7"}, batch_size=None)
    assert cfg.batch_size == 7


def test_from_env_defaults_to_process_environment(monkeypatch):
    monkeypatch.setenv("KWHEEL_COMMIT_INTERVAL_MS", "250")
    monkeypatch.setenv("KWHEEL_KAFKA_CLIENT_RACK", "az1")
    cfg = WorkerConfig.from_env()
    assert cfg.commit_interval_ms == 250
    assert cfg.kafka["client.rack"] == "az1"


def test_kafka_settings_pass_through():
    cfg = WorkerConfig.from_env(
        {
            "KWHEEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KWHEEL_KAFKA_SASL_MECHANISM": "PLAIN",
            "OTHER_KAFKA_THING": "ignored",
        }
    )
    assert cfg.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


def test_kafka_override_replaces_env_settings():
    cfg = WorkerConfig.from_env({"KWHEEL_KAFKA_ACKS": "1"}, kafka={"acks": "all"})
    assert cfg.kafka == {"acks": "all"}


@pytest.mark.parametrize(
    "var, raw",
    [
        ("KWHEEL_BATCH_SIZE", "lots"),
        ("KWHEEL_BATCH_SIZE", "1.5"),
        ("KWHEEL_COMMIT_INTERVAL_MS", ""),
        ("KWHEEL_STARTUP_TIMEOUT_S", "soon"),
    ],
)
def test_non_numeric_env_value_is_a_config_error(var, raw):
    with pytest.raises(ConfigError, match=rf"{var}={raw!r}: expected a number"):
        WorkerConfig.from_env({var: raw})


def test_env_value_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config batch_size: must be a positive integer, got 0"):
        WorkerConfig.from_env({"KWHEEL_BATCH_SIZE": "0"})


def test_invalid_env_value_is_fixed_by_override():
    cfg = WorkerConfig.from_env({"KWHEEL_BOOTSTRAP_SERVERS": "nocolon"}, bootstrap_servers="h:1")
    assert cfg.bootstrap_servers == "h:1"
