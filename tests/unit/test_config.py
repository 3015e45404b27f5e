"""WorkerConfig: validation; defaults < config file < KWHEEL_* environment < overrides; masking."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kwheel.config import WorkerConfig, describe, is_secret, load, masked
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


@pytest.mark.parametrize(
    "name", ["batch_size", "commit_interval_ms", "transaction_timeout_ms", "session_timeout_ms"]
)
@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_integer_settings_must_be_positive_integers(name, bad):
    with pytest.raises(
        ConfigError, match=rf"config {name}: must be a positive integer, got {bad!r}"
    ):
        WorkerConfig(**{name: bad})


@pytest.mark.parametrize("bad", [0, -2.5, "30"])
def test_startup_timeout_must_be_a_positive_number(bad):
    with pytest.raises(ConfigError, match=r"config startup_timeout_s: must be a positive number"):
        WorkerConfig(startup_timeout_s=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "30"])
def test_repartition_purge_interval_is_0_or_a_positive_integer(bad):
    with pytest.raises(
        ConfigError,
        match=rf"config repartition_purge_interval_ms: must be 0 \(off\) or a positive integer, got {bad!r}",
    ):
        WorkerConfig(repartition_purge_interval_ms=bad)


def test_repartition_purge_can_be_off():
    assert WorkerConfig(repartition_purge_interval_ms=0).repartition_purge_interval_ms == 0


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
    with pytest.raises(
        ConfigError, match=r"config bootstrap_servers: expected host:port\[,host:port\]"
    ):
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
    cfg = WorkerConfig.from_env(
        {"KWHEEL_BATCH_SIZE": "7", "KWHEEL_SLOT": "env-slot"}, batch_size=9, slot="flag-slot"
    )
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
    "var, raw, expected",
    [
        ("KWHEEL_BATCH_SIZE", "lots", "an integer"),
        ("KWHEEL_BATCH_SIZE", "1.5", "an integer"),
        ("KWHEEL_COMMIT_INTERVAL_MS", "", "an integer"),
        ("KWHEEL_STARTUP_TIMEOUT_S", "soon", "a number"),
    ],
)
def test_non_numeric_env_value_is_a_config_error(var, raw, expected):
    with pytest.raises(ConfigError, match=rf"{var}={raw!r}: expected {expected}"):
        WorkerConfig.from_env({var: raw})


def test_env_value_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config batch_size: must be a positive integer, got 0"):
        WorkerConfig.from_env({"KWHEEL_BATCH_SIZE": "0"})


def test_invalid_env_value_is_fixed_by_override():
    cfg = WorkerConfig.from_env({"KWHEEL_BOOTSTRAP_SERVERS": "nocolon"}, bootstrap_servers="h:1")
    assert cfg.bootstrap_servers == "h:1"


# ---- the config file ---------------------------------------------------------------------------


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "kwheel.toml"
    path.write_text(text)
    return path


FILE = """
bootstrap_servers = "file:1"
state_dir = "/srv/state"
slot = "file-slot"
batch_size = 10
startup_timeout_s = 5
log_format = "json"

[kafka]
security.protocol = "SASL_SSL"
"sasl.mechanism" = "PLAIN"
"socket.keepalive.enable" = true
"""


def test_the_file_sets_fields_and_kafka_settings(tmp_path):
    cfg = WorkerConfig.from_env({}, config_file=write(tmp_path, FILE))
    assert cfg.bootstrap_servers == "file:1"
    assert cfg.state_dir == Path("/srv/state")
    assert cfg.slot == "file-slot"
    assert cfg.batch_size == 10
    assert cfg.startup_timeout_s == 5.0 and isinstance(cfg.startup_timeout_s, float)
    assert cfg.log_format == "json"
    assert cfg.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "socket.keepalive.enable": "true",
    }


def test_precedence_is_default_file_env_flag(tmp_path):
    path = write(tmp_path, FILE)
    env = {
        "KWHEEL_CONFIG": str(path),
        "KWHEEL_BATCH_SIZE": "20",
        "KWHEEL_SLOT": "env-slot",
        "KWHEEL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KWHEEL_KAFKA_CLIENT_RACK": "az1",
    }
    cfg, sources = load(env, slot="flag-slot")
    assert (cfg.commit_interval_ms, sources["commit_interval_ms"]) == (100, "default")
    assert (cfg.bootstrap_servers, sources["bootstrap_servers"]) == ("file:1", "file")
    assert (cfg.batch_size, sources["batch_size"]) == (20, "env")
    assert (cfg.slot, sources["slot"]) == ("flag-slot", "flag")
    # per kafka key: the environment wins, the file's other keys stay
    assert cfg.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "socket.keepalive.enable": "true",
        "client.rack": "az1",
    }
    assert sources["kafka.security.protocol"] == "file"
    assert sources["kafka.sasl.mechanism"] == "env"
    assert sources["kafka.client.rack"] == "env"


def test_config_flag_beats_kwheel_config(tmp_path):
    flag = write(tmp_path, "batch_size = 1\n")
    other = tmp_path / "other.toml"
    other.write_text("batch_size = 2\n")
    assert WorkerConfig.from_env({"KWHEEL_CONFIG": str(other)}, config_file=flag).batch_size == 1
    assert WorkerConfig.from_env({"KWHEEL_CONFIG": str(other)}).batch_size == 2


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "batch_sise = 3\n",
            r"config file '.*kwheel.toml': unknown key 'batch_sise' \(did you mean 'batch_size'\?\)",
        ),
        (
            "colour = 3\n",
            r"config file '.*kwheel.toml': unknown key 'colour' \(expected one of bootstrap_servers, ",
        ),
        (
            'batch_size = "3"\n',
            r"config file '.*kwheel.toml': batch_size = \"3\": expected an integer",
        ),
        ("batch_size = 1.5\n", r"batch_size = 1.5: expected an integer"),
        ("batch_size = true\n", r"batch_size = true: expected an integer"),
        ('startup_timeout_s = "soon"\n', r"startup_timeout_s = \"soon\": expected a number"),
        ("slot = 7\n", r"slot = 7: expected a string"),
        ('kafka = "SASL_SSL"\n', r"kafka must be a table \(\[kafka\]\), got \"SASL_SSL\""),
        (
            "[kafka]\nacks = [1, 2]\n",
            r"kafka.acks = \[1, 2\]: expected a string, number or boolean",
        ),
        (
            '[kafka]\n"bootstrap.servers" = "a:1"\n',
            r"set bootstrap_servers, not bootstrap.servers in \[kafka\]",
        ),
        (
            "batch_size = \n",
            r"config file '.*kwheel.toml': not valid TOML: .*\(at line 1, column 14\)",
        ),
        (
            "batch_size = 0\n",
            r"config batch_size: must be a positive integer, got 0 \(from config file '.*kwheel.toml'\)",
        ),
    ],
)
def test_file_errors_name_the_file_the_key_and_what_was_expected(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as e:
        WorkerConfig.from_env({}, config_file=path)
    assert "\n" not in str(e.value)


def test_an_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"config file '.*missing.toml': cannot read it \(No such file or directory\)",
    ):
        WorkerConfig.from_env({"KWHEEL_CONFIG": str(tmp_path / "missing.toml")})


def test_range_errors_name_where_the_value_was_set():
    with pytest.raises(ConfigError, match=r"got 0 \(from KWHEEL_BATCH_SIZE\)$"):
        WorkerConfig.from_env({"KWHEEL_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match=r"got 0 \(from --batch-size\)$"):
        WorkerConfig.from_env({}, batch_size=0)


def test_empty_env_value_unsets_an_optional_setting():
    assert WorkerConfig.from_env({"KWHEEL_SLOT": ""}).slot is None


@pytest.mark.parametrize("level", ["debug", "Warning", "ERROR"])
def test_log_level_is_any_case(level):
    assert WorkerConfig.from_env({"KWHEEL_LOG_LEVEL": level}).log_level == level.upper()


@pytest.mark.parametrize("field, bad", [("log_level", "LOUD"), ("log_format", "xml")])
def test_log_settings_are_checked(field, bad):
    with pytest.raises(
        ConfigError, match=rf"config {field}: must be .*got {bad!r} \(from KWHEEL_{field.upper()}\)"
    ):
        WorkerConfig.from_env({f"KWHEEL_{field.upper()}": bad})


# Fields other engineers add get file and environment support from their types alone.
@dataclass
class Extended(WorkerConfig):
    metrics_port: int | None = None
    schema_registry_url: str | None = None
    metrics_enabled: bool = False
    ratio: float = 0.5
    spool_dir: Path = Path("spool")


def test_new_fields_are_read_from_file_and_env_by_their_types(tmp_path):
    path = write(
        tmp_path,
        'metrics_port = 9100\nschema_registry_url = "http://sr:8081"\nmetrics_enabled = true\n'
        'ratio = 1\nspool_dir = "/var/spool"\n',
    )
    cfg, sources = load({}, path, Extended)
    assert (
        cfg.metrics_port,
        cfg.schema_registry_url,
        cfg.metrics_enabled,
        cfg.ratio,
        cfg.spool_dir,
    ) == (9100, "http://sr:8081", True, 1.0, Path("/var/spool"))
    assert sources["metrics_port"] == "file"
    env = {
        "KWHEEL_METRICS_PORT": "9200",
        "KWHEEL_SCHEMA_REGISTRY_URL": "",
        "KWHEEL_METRICS_ENABLED": "off",
        "KWHEEL_RATIO": "0.25",
        "KWHEEL_SPOOL_DIR": "/tmp/s",
    }
    cfg = load(env, path, Extended)[0]
    assert (
        cfg.metrics_port,
        cfg.schema_registry_url,
        cfg.metrics_enabled,
        cfg.ratio,
        cfg.spool_dir,
    ) == (9200, None, False, 0.25, Path("/tmp/s"))
    assert load({}, None, Extended)[0].metrics_port is None
    with pytest.raises(
        ConfigError, match=r"KWHEEL_METRICS_ENABLED='maybe': expected true or false"
    ):
        load({"KWHEEL_METRICS_ENABLED": "maybe"}, None, Extended)
    with pytest.raises(ConfigError, match=r"metrics_port = \"9100\": expected an integer"):
        load({}, write(tmp_path, 'metrics_port = "9100"\n'), Extended)


def test_a_field_named_like_the_kafka_prefix_is_not_passed_through():
    @dataclass
    class WithKafkaField(WorkerConfig):
        kafka_poll_ms: int = 5

    cfg = load({"KWHEEL_KAFKA_POLL_MS": "7", "KWHEEL_KAFKA_ACKS": "all"}, None, WithKafkaField)[0]
    assert cfg.kafka_poll_ms == 7 and cfg.kafka == {"acks": "all"}


# ---- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "ssl.key.location",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.token.endpoint.url",
        "basic.auth.user.info",
        "schema.registry.basic.auth.user.info",
        "schema_registry_password",
        "api_token",
        "sasl.jaas.config",
    ],
)
def test_secrets_are_recognised(name):
    assert is_secret(name)


@pytest.mark.parametrize(
    "name",
    [
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "ssl.ca.location",
        "ssl.keystore.location",
        "bootstrap_servers",
        "slot",
        "client.rack",
        "sasl.kerberos.keytab",
    ],
)
def test_other_settings_are_shown(name):
    assert not is_secret(name)


def test_describe_masks_secrets_and_url_passwords(tmp_path):
    env = {
        "KWHEEL_KAFKA_SASL_PASSWORD": "s3cret",
        "KWHEEL_KAFKA_SASL_USERNAME": "kw",
        "KWHEEL_KAFKA_SSL_KEY_PEM": "-----BEGIN",
    }
    shown = describe(*load(env))
    assert shown["kafka.sasl.password"] == {"value": "***", "source": "env"}
    assert shown["kafka.ssl.key.pem"]["value"] == "***"
    assert shown["kafka.sasl.username"]["value"] == "kw"
    assert shown["batch_size"] == {"value": 5000, "source": "default"}
    assert shown["slot"] == {"value": None, "source": "default"}
    assert "s3cret" not in repr(shown) and "BEGIN" not in repr(shown)
    assert (
        masked("schema_registry_url", "https://user:pw@sr.example.com:8081/x")
        == "https://user:***@sr.example.com:8081/x"
    )
    assert masked("schema_registry_url", "http://sr:8081") == "http://sr:8081"


def test_consumers_accept_fetch_replies_larger_than_librdkafkas_default():
    """The embedded broker answers a fetch with everything after the offset; a restore of a
    large changelog failed for ever at librdkafka's 100 MB default (long chaos run)."""
    from kwheel.kafka import clients

    cfg = WorkerConfig(bootstrap_servers="127.0.0.1:1")
    for conf in (clients.reader_config(cfg), clients.group_consumer_config(cfg, "g", None)):
        assert conf["receive.message.max.bytes"] >= 1_000_000_000
