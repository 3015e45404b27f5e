"""The ``kwheel`` command line: worker, inject, topics, status, config, ui, reset, injector."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .config import WorkerConfig
from .errors import KwheelError
from .loader import load_pipeline

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="kwheel: MillWheel-style stream processing on Kafka.",
)
topics_app = typer.Typer(no_args_is_help=True, help="Create or check the topics a pipeline needs.")
app.add_typer(topics_app, name="topics")
config_app = typer.Typer(no_args_is_help=True, help="Show the effective configuration.")
app.add_typer(config_app, name="config")
injector_app = typer.Typer(no_args_is_help=True, help="Manage the instances of injectors.")
app.add_typer(injector_app, name="injector")

PIPELINE_HELP = "The pipeline as module:attribute, e.g. examples.keyed_count:pipeline"
Bootstrap = typer.Option(
    None,
    "--bootstrap-servers",
    "-b",
    help="Kafka host:port[,host:port] (env KWHEEL_BOOTSTRAP_SERVERS)",
)
ConfigFile = typer.Option(
    None,
    "--config",
    help="TOML config file (env KWHEEL_CONFIG); flags and KWHEEL_* variables override it",
)
LogLevel = typer.Option(
    None, "--log-level", help="DEBUG, INFO, WARNING or ERROR (env KWHEEL_LOG_LEVEL)"
)
LogFormat = typer.Option(
    None, "--log-format", help="text or json: one JSON object per log line (env KWHEEL_LOG_FORMAT)"
)


def _setup_logging(cfg: WorkerConfig) -> None:
    from .logs import configure

    configure(cfg.log_level, cfg.log_format, cfg.slot)


@app.command()
def worker(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    computation: list[str] | None = typer.Option(
        None, "--computation", "-c", help="Run only these computations (repeatable); default all"
    ),
    processes: int = typer.Option(
        1, "--processes", "-p", min=1, help="Worker processes to start on this machine"
    ),
    bootstrap_servers: str | None = Bootstrap,
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Where RocksDB stores live (env KWHEEL_STATE_DIR)"
    ),
    slot: str | None = typer.Option(
        None,
        "--slot",
        help="Stable worker slot id: static group membership for fast restarts (env KWHEEL_SLOT)",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Max input records per task transaction (env KWHEEL_BATCH_SIZE)"
    ),
    commit_interval_ms: int | None = typer.Option(
        None,
        "--commit-interval-ms",
        help="Commit at least this often (env KWHEEL_COMMIT_INTERVAL_MS)",
    ),
    offset_reset: str | None = typer.Option(
        None,
        "--offset-reset",
        help="earliest, latest or fail: where to resume when input records were deleted before being processed (env KWHEEL_OFFSET_RESET)",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        help="Serve Prometheus metrics on this port; with --processes, process i uses port+i (0: any free port) (env KWHEEL_METRICS_PORT)",
    ),
    config: Path | None = ConfigFile,
    log_level: str | None = LogLevel,
    log_format: str | None = LogFormat,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Same as --log-level DEBUG"),
) -> None:
    """Join the consumer groups of the pipeline's computations and process until SIGTERM."""
    import signal

    # Until the worker loop takes over (it finishes the batch and commits), a stop request
    # simply ends the process: nothing has been processed yet.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cfg = WorkerConfig.from_env(
        config_file=config,
        bootstrap_servers=bootstrap_servers,
        state_dir=state_dir,
        slot=slot,
        batch_size=batch_size,
        commit_interval_ms=commit_interval_ms,
        offset_reset=offset_reset,
        log_level="DEBUG" if verbose else log_level,
        log_format=log_format,
        metrics_port=metrics_port,
    )
    _setup_logging(cfg)
    p = load_pipeline(pipeline)
    if processes > 1:
        from .runtime.supervisor import run_processes

        child = [
            pipeline,
            "--bootstrap-servers",
            cfg.bootstrap_servers,
            "--state-dir",
            str(cfg.state_dir),
            "--batch-size",
            str(cfg.batch_size),
            "--commit-interval-ms",
            str(cfg.commit_interval_ms),
            "--offset-reset",
            cfg.offset_reset,
            "--log-level",
            cfg.log_level,
            "--log-format",
            cfg.log_format,
        ]
        child += ["--config", str(config)] if config else []
        for c in computation or []:
            child += ["--computation", c]
        raise typer.Exit(run_processes(processes, child, cfg.slot, metrics_port=cfg.metrics_port))
    from .runtime.worker import Worker

    Worker(p, cfg, computation).run()


@app.command()
def inject(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    name: str = typer.Argument(
        ..., help="The injector, as declared with pipeline.injector(NAME, ...)"
    ),
    bootstrap_servers: str | None = Bootstrap,
    instance: int = typer.Option(
        0, "--instance", min=0, help="This process's share of the work: 0..instances-1"
    ),
    instances: int = typer.Option(
        1, "--instances", min=1, help="How many processes share the injector"
    ),
    processes: int = typer.Option(
        1, "--processes", "-p", min=1, help="Start this many injector processes here"
    ),
    slot: str | None = typer.Option(
        None, "--slot", help="Stable id prefix (static group membership for topic sources)"
    ),
    final: bool = typer.Option(
        True,
        "--final/--no-final",
        help="When the source ends, declare the stream finished (watermark to the end)",
    ),
    config: Path | None = ConfigFile,
    log_level: str | None = LogLevel,
    log_format: str | None = LogFormat,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Same as --log-level DEBUG"),
) -> None:
    """Run a declared injector: send its records and publish its low watermark."""
    cfg = WorkerConfig.from_env(
        config_file=config,
        bootstrap_servers=bootstrap_servers,
        slot=slot,
        log_level="DEBUG" if verbose else log_level,
        log_format=log_format,
    )
    _setup_logging(cfg)
    p = load_pipeline(pipeline)
    if processes > 1:
        from .runtime.supervisor import run_processes

        child = [
            pipeline,
            name,
            "--bootstrap-servers",
            cfg.bootstrap_servers,
            "--final" if final else "--no-final",
            "--log-level",
            cfg.log_level,
            "--log-format",
            cfg.log_format,
        ]
        child += ["--config", str(config)] if config else []
        raise typer.Exit(run_processes(processes, child, cfg.slot, command="inject"))
    from .injector import run_injector
    from .kafka.clients import wait_for_broker

    wait_for_broker(cfg)
    run_injector(p, name, cfg, instance, instances, final=final)


@app.command()
def reset(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    computations: list[str] | None = typer.Argument(
        None,
        help="Reset only these computations (those reading their outputs must be named too); "
        "default: every computation",
        show_default=False,
    ),
    bootstrap_servers: str | None = Bootstrap,
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Where this machine's RocksDB stores live (env KWHEEL_STATE_DIR)"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Reset without asking for confirmation"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what would be deleted, and delete nothing"
    ),
    config: Path | None = ConfigFile,
) -> None:
    """For a stopped pipeline: delete its computations' committed offsets, changelogs,
    published watermarks and local state stores, so that they process their inputs again
    from the start. Like Kafka Streams' application reset tool."""
    from .kafka.clients import wait_for_broker
    from .reset import check_stopped, execute, plan_reset

    cfg = WorkerConfig.from_env(
        config_file=config, bootstrap_servers=bootstrap_servers, state_dir=state_dir
    )
    p = load_pipeline(pipeline)
    plan = plan_reset(p, computations or [], cfg.state_dir)
    admin = wait_for_broker(cfg)
    check_stopped(admin, plan, cfg.startup_timeout_s)
    typer.echo("\n".join(plan.describe()))
    if dry_run:
        typer.echo("dry run: nothing deleted")
        return
    if not yes:
        try:
            ok = typer.confirm("Delete all this?")
        except typer.Abort:
            raise KwheelError(
                "kwheel reset needs a confirmation: answer y, or pass --yes"
            ) from None
        if not ok:
            raise KwheelError("reset cancelled: nothing deleted")
    execute(p, plan, cfg, admin, lambda line: typer.echo(f"  {line}"))
    typer.echo(
        f"reset {', '.join(plan.computations)} of pipeline {p.name!r}: its workers will process "
        f"the inputs again from the start"
    )


@injector_app.command("retire")
def injector_retire(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    name: str = typer.Argument(..., help="The injector's name: NAME in injector:NAME/INSTANCE"),
    instance: str = typer.Argument(
        ...,
        help="The dead instance: INSTANCE in injector:NAME/INSTANCE, as kwheel status lists it",
    ),
    bootstrap_servers: str | None = Bootstrap,
    force: bool = typer.Option(
        False,
        "--force",
        help="Retire it even if it published within the last 10 s (it may be alive)",
    ),
    config: Path | None = ConfigFile,
) -> None:
    """Declare a dead injector instance finished, so its watermark stops holding its streams
    back. For good: whatever it publishes later is ignored, and its records arrive late."""
    from .injector.retire import retire
    from .kafka.clients import wait_for_broker
    from .status import watermark_text

    cfg = WorkerConfig.from_env(config_file=config, bootstrap_servers=bootstrap_servers)
    p = load_pipeline(pipeline)
    wait_for_broker(cfg)
    r = retire(p, name, instance, cfg, force=force)
    streams = ", ".join(r.streams)
    if r.done == "retired":
        typer.echo(
            f"retired {r.producer}: the watermark of {streams} no longer waits for it "
            f"(it was at {watermark_text(r.watermark)})"
        )
    else:
        typer.echo(f"{r.producer} is {r.done}: nothing to do")


def _admin(bootstrap_servers: str | None, config: Path | None) -> AdminClient:
    from .kafka.clients import wait_for_broker

    cfg = WorkerConfig.from_env(config_file=config, bootstrap_servers=bootstrap_servers)
    return wait_for_broker(cfg)


@topics_app.command("create")
def topics_create(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    bootstrap_servers: str | None = Bootstrap,
    replication: int = typer.Option(
        1, "--replication", min=1, help="Replication factor of new topics"
    ),
    config: Path | None = ConfigFile,
) -> None:
    """Create every missing topic (streams, changelogs, repartitions), then check them all."""
    from .kafka.topics import create_topics

    p = load_pipeline(pipeline)
    created = create_topics(_admin(bootstrap_servers, config), p, replication)
    typer.echo(f"{len(created)} topics created, {len(p.topics())} checked for pipeline {p.name!r}")


@topics_app.command("check")
def topics_check(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    bootstrap_servers: str | None = Bootstrap,
    config: Path | None = ConfigFile,
) -> None:
    """Verify every topic exists with the right partitions, cleanup policy and (changelogs) delete.retention.ms."""
    from .kafka.topics import check_topics

    p = load_pipeline(pipeline)
    check_topics(_admin(bootstrap_servers, config), p)
    typer.echo(f"all {len(p.topics())} topics of pipeline {p.name!r} are in place")


@app.command()
def status(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    bootstrap_servers: str | None = Bootstrap,
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON for machines instead of a table"
    ),
    config: Path | None = ConfigFile,
) -> None:
    """Per computation and task: consumer lag, low watermark and its lag behind the clock,
    records/s, records processed, dedup drops, late records, pending timers."""
    import json

    from .status import collect, render

    p = load_pipeline(pipeline)
    st = collect(p, WorkerConfig.from_env(config_file=config, bootstrap_servers=bootstrap_servers))
    typer.echo(json.dumps(st, indent=2) if as_json else render(st))


@config_app.command("show")
def config_show(
    config: Path | None = ConfigFile,
    bootstrap_servers: str | None = Bootstrap,
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON for machines instead of a table"
    ),
) -> None:
    """Print the effective settings, where each comes from (default, file, env, flag), secrets masked."""
    import json

    from .config import config_path, describe, load

    path = config_path(config_file=config)
    settings = describe(*load(config_file=config, bootstrap_servers=bootstrap_servers))
    if as_json:
        typer.echo(json.dumps({"config_file": path and str(path), "settings": settings}, indent=2))
        return
    typer.echo(f"config file: {path if path else 'none'}")
    width = max(map(len, settings))
    for name, s in settings.items():
        value = "unset" if s["value"] is None else s["value"]
        typer.echo(f"{name:<{width}}  {s['source']:<7}  {value}")


@app.command()
def ui(
    pipeline: str = typer.Argument(..., help=PIPELINE_HELP),
    bootstrap_servers: str | None = Bootstrap,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (default: this machine only)"
    ),
    port: int = typer.Option(
        8080, "--port", min=0, max=65535, help="Port to listen on (0: any free port)"
    ),
    config: Path | None = ConfigFile,
    log_level: str | None = LogLevel,
    log_format: str | None = LogFormat,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Same as --log-level DEBUG"),
) -> None:
    """Serve a read-only web page: the pipeline graph and its live status (as kwheel status)."""
    import signal

    from .ui import make_server

    cfg = WorkerConfig.from_env(
        config_file=config,
        bootstrap_servers=bootstrap_servers,
        log_level="DEBUG" if verbose else log_level,
        log_format=log_format,
    )
    _setup_logging(cfg)
    p = load_pipeline(pipeline)
    server = make_server(p, cfg, host, port)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"kwheel ui: pipeline {p.name!r} on http://{shown}:{server.server_port}/")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    """Entry point: KwheelErrors become one line on stderr and exit code 1."""
    try:
        rc = app(standalone_mode=False)
    except KwheelError as e:
        print(f"kwheel: error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # usage errors of the (vendored) click parser show themselves
        if hasattr(e, "show") and isinstance(code := getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
