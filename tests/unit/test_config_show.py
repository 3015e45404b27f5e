"""``kwheel config show`` as users run it: a subprocess of the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kwheel(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KWHEEL_")}
    clean["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "kwheel", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_show_json_gives_values_sources_and_masks_secrets(tmp_path):
    (tmp_path / "kwheel.toml").write_text(
        'bootstrap_servers = "file:1"\nbatch_size = 10\ncommit_interval_ms = 50\n'
        '[kafka]\nsecurity.protocol = "SASL_SSL"\n"sasl.password" = "file-pa55"\n'
    )
    env = {
        "KWHEEL_CONFIG": "kwheel.toml",
        "KWHEEL_BATCH_SIZE": "20",
        "KWHEEL_KAFKA_SSL_KEY_PASSWORD": "env-pa55",
    }
    r = kwheel("config", "show", "--json", "-b", "flag:2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pa55" not in r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["config_file"] == "kwheel.toml"
    s = out["settings"]
    assert s["bootstrap_servers"] == {"value": "flag:2", "source": "flag"}
    assert s["batch_size"] == {"value": 20, "source": "env"}
    assert s["commit_interval_ms"] == {"value": 50, "source": "file"}
    assert s["session_timeout_ms"] == {"value": 10000, "source": "default"}
    assert s["kafka.security.protocol"] == {"value": "SASL_SSL", "source": "file"}
    assert s["kafka.sasl.password"] == {"value": "***", "source": "file"}
    assert s["kafka.ssl.key.password"] == {"value": "***", "source": "env"}


def test_config_show_text_is_one_line_per_setting(tmp_path):
    (tmp_path / "k.toml").write_text('slot = "node1"\n[kafka]\n"sasl.password" = "file-pa55"\n')
    r = kwheel("config", "show", "--config", "k.toml", env={}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "config file: k.toml"
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["slot"] == ["file", "node1"]
    assert rows["batch_size"] == ["default", "5000"]
    assert rows["kafka.sasl.password"] == ["file", "***"]
    assert "pa55" not in r.stdout


def test_a_bad_config_file_is_one_error_line_and_exit_1(tmp_path):
    (tmp_path / "k.toml").write_text("batch_size = 'many'\n")
    for args in (["config", "show", "--config", "k.toml"], ["worker", "m:p", "--config", "k.toml"]):
        r = kwheel(*args, env={}, cwd=tmp_path)
        assert r.returncode == 1
        assert (
            r.stderr
            == "kwheel: error: config file 'k.toml': batch_size = \"many\": expected an integer\n"
        )


def test_schema_registry_auth_is_masked():
    from kwheel.config import is_secret, masked

    assert is_secret("schema_registry_auth")
    assert masked("schema_registry_auth", "user:pw") == "***"
    assert (
        masked("schema_registry_url", "http://user:pw@registry:8081")
        == "http://user:***@registry:8081"
    )
