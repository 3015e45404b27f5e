"""docs/testing.md: its driver example runs as shown, and its fixture example compiles
and uses only fixtures and calls the test kit has."""

import re
from pathlib import Path

from kwheel.testing import pytest_plugin
from kwheel.testing.endtoend import PipelineRun

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_driver_example_runs():
    code = python_blocks()[0]
    assert "PipelineDriver(" in code
    exec(compile(code, f"{DOC}:driver example", "exec"), {"__name__": "doc_example"})


def test_the_fixture_example_uses_what_exists():
    code = python_blocks()[1]
    compile(code, f"{DOC}:fixture example", "exec")
    for fixture in re.findall(r"def test_\w+\(([^)]*)\)", code)[0].split(","):
        assert hasattr(pytest_plugin, fixture.strip()), fixture
    for method in set(re.findall(r"\brun\.(\w+)\(", code)):
        assert hasattr(PipelineRun, method), method
