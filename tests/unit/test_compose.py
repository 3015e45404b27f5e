"""docker-compose.yml cannot run here (no Docker engine): check it against the CLI instead."""

from dataclasses import fields
from pathlib import Path

import pytest
import typer
import yaml

from kwheel.cli import app
from kwheel.config import WorkerConfig
from kwheel.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KWHEEL_SERVICES = [n for n, s in SERVICES.items() if s.get("image") == "kwheel:local"]


def parse(args: list[str]):
    """Parse a kwheel command line the way the CLI would; raise on unknown commands/options."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("kwheel", list(args), resilient_parsing=False)
    while hasattr(cmd, "resolve_command"):  # a group: descend into the subcommand
        name, cmd, rest = cmd.resolve_command(
            ctx,
            list(
                getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
            )
            + ctx.args,
        )
        ctx = cmd.make_context(name, rest, parent=ctx)
    return ctx


def test_kafka_runs_in_kraft_mode_with_a_health_check():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "healthcheck" in kafka
    assert not any("zookeeper" in n for n in SERVICES)


def test_the_image_runs_the_kwheel_cli():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["kwheel"]' in dockerfile
    assert {"topics", "injector", "worker-1", "worker-2"} <= set(KWHEEL_SERVICES)


@pytest.mark.parametrize("service", KWHEEL_SERVICES)
def test_every_command_parses_and_names_a_real_pipeline(service):
    args = SERVICES[service]["command"]
    ctx = parse(args)
    pipeline = load_pipeline(ctx.params["pipeline"])
    if args[0] == "inject":
        assert ctx.params["name"] in pipeline.injectors


@pytest.mark.parametrize("service", KWHEEL_SERVICES)
def test_environment_names_real_settings(service):
    known = {f"KWHEEL_{f.name.upper()}" for f in fields(WorkerConfig)}
    for var in SERVICES[service].get("environment", {}):
        assert var in known or var.startswith("KWHEEL_KAFKA_"), f"{service}: unknown setting {var}"
    WorkerConfig.from_env(SERVICES[service].get("environment", {}))  # values are valid too


def test_workers_have_distinct_slots_and_own_state():
    workers = [n for n in KWHEEL_SERVICES if SERVICES[n]["command"][0] == "worker"]
    assert len(workers) == 2
    slots = [parse(SERVICES[n]["command"]).params["slot"] for n in workers]
    assert None not in slots and len(set(slots)) == len(slots)
    volumes = [SERVICES[n]["volumes"][0] for n in workers]
    assert len(set(volumes)) == len(volumes)


def test_start_order_topics_first():
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for n in ("injector", "worker-1", "worker-2"):
        assert SERVICES[n]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
