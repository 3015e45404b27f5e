"""The examples use only kwheel's public API: the names of ``kwheel`` and the modules the
docs tell users to import, so what they show works the same for a user's pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import kwheel

ROOT = Path(__file__).resolve().parents[2]

PUBLIC_MODULES = {
    "kwheel",
    "kwheel.config",  # WorkerConfig: docs/configuration.md
    "kwheel.injector",  # Injector, run_injector: docs/tutorial.md
    "kwheel.sources",  # docs/configuration.md, docs/tutorial.md
    "kwheel.testing",  # docs/testing.md
    "kwheel.testing.broker",  # EmbeddedBroker: docs/tutorial.md
    "kwheel.testing.readers",  # read_committed and the tails: docs/testing.md
}


def kwheel_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m == "kwheel" or m.startswith("kwheel.")]


def test_the_examples_import_only_public_modules():
    used = {
        (str(p.relative_to(ROOT)), m)
        for p in sorted((ROOT / "examples").rglob("*.py"))
        for m in kwheel_imports(p)
    }
    assert used, "the examples import kwheel"
    assert sorted((p, m) for p, m in used if m not in PUBLIC_MODULES) == []


def test_every_public_name_exists():
    assert all(hasattr(kwheel, n) for n in kwheel.__all__)
