"""The documentation stays true to the code.

docs/configuration.md must name every WorkerConfig field with its environment variable and
its real default, no KWHEEL_* variable that does not exist, and every option of every CLI
command in that command's section. Relative links in README.md and docs/*.md must point
to files (and headings) that exist.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import typer

import kwheel.cli
from kwheel.config import CONFIG_ENV, ENV_PREFIX, WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOC = ROOT / "docs" / "configuration.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Documented variables that are not WorkerConfig fields on purpose.
OTHER_PREFIXES = (
    ENV_PREFIX + "KAFKA_",
    ENV_PREFIX + "TEST_",
    ENV_PREFIX + "ZEITGEIST_",
    ENV_PREFIX + "KEYED_COUNT_",
    ENV_PREFIX + "BENCH_",
    ENV_PREFIX + "CHAOS",
    CONFIG_ENV,
)
FIELDS = {f.name: f for f in dataclasses.fields(WorkerConfig)}


def env_var(field: str) -> str:
    return ENV_PREFIX + field.upper()


def doc_text() -> str:
    return CONFIG_DOC.read_text(encoding="utf-8")


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or re.fullmatch(r"\|[\s:|-]+\|", line):
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def field_rows() -> dict[str, list[str]]:
    """Rows of the settings table, by field name: [field, env var, flag, default, meaning]."""
    rows = {}
    for cells in table_rows(doc_text()):
        names = backticked(cells[0])
        if len(cells) >= 5 and len(names) == 1 and names[0] in FIELDS:
            assert names[0] not in rows, f"field {names[0]} has two rows in {CONFIG_DOC.name}"
            rows[names[0]] = cells
    return rows


def default_of(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


# ---- WorkerConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_is_documented_with_its_environment_variable(name):
    rows = field_rows()
    assert name in rows, (
        f"WorkerConfig.{name} has no row in the settings table of {CONFIG_DOC.name}"
    )
    want = ENV_PREFIX + "KAFKA_<NAME>" if name == "kafka" else env_var(name)
    assert want in backticked(rows[name][1]), f"the row of {name} does not name {want}"
    assert want in doc_text()


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_documented_defaults_are_the_real_ones(name):
    cells = field_rows().get(name)
    assert cells is not None, f"WorkerConfig.{name} is not documented"
    spans = backticked(cells[3])
    assert spans, f"the default of {name} is not given in backticks: {cells[3]!r}"
    text, real = spans[0], default_of(FIELDS[name])
    if isinstance(real, Path):
        assert Path(text) == real, f"{name}: documented default {text!r}, real {str(real)!r}"
    elif isinstance(real, str):
        assert text == real, f"{name}: documented default {text!r}, real {real!r}"
    else:
        documented = ast.literal_eval(text)
        assert documented == real and type(documented) is type(real), (
            f"{name}: documented default {text!r}, real {real!r}"
        )


def test_no_unknown_kwheel_variables_in_the_docs():
    known = {env_var(n) for n in FIELDS}
    for path in DOCS:
        for var in set(
            re.findall(r"\b" + ENV_PREFIX + r"[A-Z0-9_]+", path.read_text(encoding="utf-8"))
        ):
            assert var in known or var.startswith(OTHER_PREFIXES), (
                f"{path.relative_to(ROOT)} mentions {var}, which WorkerConfig does not read"
            )


def test_the_kafka_pass_through_works_as_documented():
    cfg = WorkerConfig.from_env(
        {
            ENV_PREFIX + "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            ENV_PREFIX + "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        }
    )
    assert cfg.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}


# ---- the command line -----------------------------------------------------------------------


def commands() -> dict[str, object]:
    """Every leaf command, by its path ("worker", "topics create", ...)."""
    out: dict[str, object] = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(kwheel.cli.app), [])
    return out


COMMANDS = commands()


def section(command: str) -> str:
    """The text under the heading of ``kwheel <command>``, up to the next heading."""
    text = doc_text()
    m = re.search(rf"^#+ `kwheel {re.escape(command)}`\s*$", text, flags=re.M)
    assert m, f"{CONFIG_DOC.name} has no section headed `kwheel {command}`"
    nxt = re.search(r"^#+ ", text[m.end() :], flags=re.M)
    return text[m.end() : m.end() + nxt.start()] if nxt else text[m.end() :]


def test_the_commands_are_the_known_ones():
    assert {"worker", "inject", "status", "topics create", "topics check"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_and_argument_is_documented_in_its_section(command):
    body = section(command)
    spans = {s for cell in table_rows(body) for s in backticked(cell[0])}
    for param in COMMANDS[command].params:
        if param.param_type_name == "argument":
            assert param.name.upper() in spans, (
                f"kwheel {command}: argument {param.name.upper()} not documented"
            )
            continue
        for opt in [*param.opts, *param.secondary_opts]:
            if opt == "--help":
                continue
            assert opt in spans, f"kwheel {command}: option {opt} not in the table of its section"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_options_exist(command):
    real = {o for p in COMMANDS[command].params for o in [*p.opts, *p.secondary_opts]}
    real |= {p.name.upper() for p in COMMANDS[command].params if p.param_type_name == "argument"}
    for cells in table_rows(section(command)):
        for span in backticked(cells[0]):
            assert span in real, f"kwheel {command}: {span} is documented but is not an option"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_numeric_option_defaults_are_the_real_ones(command):
    rows = {s: cells for cells in table_rows(section(command)) for s in backticked(cells[0])}
    for param in COMMANDS[command].params:
        if param.param_type_name != "option" or type(param.default) is not int:
            continue
        cells = rows[param.opts[0]]
        spans = backticked(cells[1])
        assert spans and ast.literal_eval(spans[0]) == param.default, (
            f"kwheel {command} {param.opts[0]}: documented default {cells[1]!r}, real {param.default!r}"
        )


@pytest.mark.parametrize(
    "name", ["bootstrap_servers", "state_dir", "slot", "batch_size", "commit_interval_ms"]
)
def test_flags_of_settings_are_listed_with_the_setting(name):
    flags = {o for cmd in COMMANDS.values() for p in cmd.params if p.name == name for o in p.opts}
    assert flags, f"no command has an option for {name}"
    row = field_rows()[name]
    for flag in flags:
        assert flag in backticked(row[2]), f"the row of {name} does not list {flag}"


# ---- the tutorial ---------------------------------------------------------------------------


def test_the_tutorial_shows_the_code_of_its_example():
    tutorial = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    shown = re.findall(r"^```python\n(.*?)^```", tutorial, flags=re.S | re.M)
    assert shown, "docs/tutorial.md shows no pipeline code"
    assert shown[0].strip() in (ROOT / "examples" / "tutorial.py").read_text(encoding="utf-8"), (
        "the pipeline in docs/tutorial.md differs from examples/tutorial.py"
    )


def test_the_tutorial_pipeline_loads():
    from kwheel.loader import load_pipeline

    p = load_pipeline("examples.tutorial:pipeline")
    assert set(p.injectors) == {"views"} and set(p.computations) == {"per_user", "per_minute"}
    assert len(p.topics()) == 7  # "7 topics created" in the tutorial


# ---- links ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#+\s+(.*?)\s*#*\s*$", text, flags=re.M)}


def relative_links() -> list[tuple[Path, str]]:
    out = []
    for path in DOCS:
        text = without_code_blocks(path.read_text(encoding="utf-8"))
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            out.append((path, target))
    return out


LINKS = relative_links()


@pytest.mark.parametrize("path,target", LINKS, ids=[f"{p.name}->{t}" for p, t in LINKS])
def test_relative_links_point_to_existing_files(path, target):
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    assert dest.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), (
            f"{path.relative_to(ROOT)} links to {target}: no such heading"
        )
