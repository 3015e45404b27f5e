"""load_pipeline: module:attribute references -> a validated Pipeline, or one LoadError line."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid

import pytest

from kwheel import Pipeline
from kwheel.errors import LoadError, PipelineError
from kwheel.loader import load_pipeline

GOOD = """
from kwheel import Computation, Pipeline

class Nop(Computation):
    def process_record(self, ctx, record):
        pass

def build():
    p = Pipeline("loaded")
    p.stream("events", partitions=3, source=True)
    p.stream("out", partitions=3)
    p.computation("c", Nop, inputs=["events"], outputs=["out"])
    return p

pipeline = build()
"""


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write a module under tmp_path (on sys.path) with a unique name; return the name."""
    monkeypatch.syspath_prepend(str(tmp_path))  # also undoes the loader's own sys.path insert
    created: list[str] = []

    def make(source: str, prefix: str = "kwheel_unit_mod") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("ref", ["", "no_colon", ":pipeline", "module:", "module"])
def test_bad_reference_format(ref):
    with pytest.raises(LoadError, match=r"bad pipeline reference .*: expected module:attribute"):
        load_pipeline(ref)


def test_missing_module():
    name = f"kwheel_missing_{uuid.uuid4().hex[:10]}"
    with pytest.raises(
        LoadError, match=rf"cannot import pipeline module '{name}': no module named '{name}'"
    ):
        load_pipeline(f"{name}:pipeline")


def test_missing_parent_package():
    pkg = f"kwheel_missing_{uuid.uuid4().hex[:10]}"
    with pytest.raises(
        LoadError, match=rf"cannot import pipeline module '{pkg}\.sub': no module named '{pkg}'"
    ):
        load_pipeline(f"{pkg}.sub:pipeline")


def test_module_importing_a_missing_dependency(make_module):
    name = make_module("import kwheel_dep_that_does_not_exist\n")
    with pytest.raises(
        LoadError,
        match=rf"pipeline module '{name}' failed to import: ModuleNotFoundError: .*kwheel_dep_that_does_not_exist",
    ):
        load_pipeline(f"{name}:pipeline")


# regression: the module-name check had no dot boundary (loader.py)
def test_missing_dependency_whose_name_prefixes_the_module_is_reported_as_a_failed_import(
    make_module,
):
    dep = f"kwheeldep{uuid.uuid4().hex[:8]}"
    name = make_module(f"import {dep}\n", prefix=dep)
    with pytest.raises(
        LoadError, match=rf"pipeline module '{name}' failed to import: ModuleNotFoundError"
    ):
        load_pipeline(f"{name}:pipeline")


def test_module_raising_on_import(make_module):
    name = make_module("raise RuntimeError('boom while importing')\n")
    with pytest.raises(
        LoadError,
        match=rf"pipeline module '{name}' failed to import: RuntimeError: boom while importing",
    ):
        load_pipeline(f"{name}:pipeline")


def test_module_with_syntax_error(make_module):
    name = make_module("def broken(:\n")
    with pytest.raises(LoadError, match=rf"pipeline module '{name}' failed to import: SyntaxError"):
        load_pipeline(f"{name}:pipeline")


def test_module_raising_kwheel_error_on_import_keeps_its_message(make_module):
    name = make_module(
        """
        from kwheel import Pipeline
        p = Pipeline("dup")
        p.stream("s")
        p.stream("s")
        """
    )
    with pytest.raises(
        LoadError, match=rf"pipeline module '{name}': pipeline 'dup': stream 's' declared twice"
    ):
        load_pipeline(f"{name}:p")


def test_missing_attribute(make_module):
    name = make_module(GOOD)
    with pytest.raises(LoadError, match=rf"module '{name}' has no attribute 'nope'"):
        load_pipeline(f"{name}:nope")


def test_attribute_that_is_not_a_pipeline(make_module):
    name = make_module("pipeline = 42\n")
    with pytest.raises(LoadError, match=rf"{name}:pipeline is a int, not a kwheel Pipeline"):
        load_pipeline(f"{name}:pipeline")


def test_callable_returning_something_else(make_module):
    name = make_module("def pipeline():\n    return {'not': 'a pipeline'}\n")
    with pytest.raises(LoadError, match=rf"{name}:pipeline is a dict, not a kwheel Pipeline"):
        load_pipeline(f"{name}:pipeline")


def test_pipeline_attribute_loads_validated(make_module):
    name = make_module(GOOD)
    p = load_pipeline(f"{name}:pipeline")
    assert isinstance(p, Pipeline)
    assert p.name == "loaded"
    assert p.computations["c"].partitions == 3  # resolved by validate()


def test_callable_attribute_returning_a_pipeline_works(make_module):
    name = make_module(GOOD)
    p = load_pipeline(f"{name}:build")
    assert isinstance(p, Pipeline)
    assert p.computations["c"].partitions == 3


def test_invalid_pipeline_raises_its_pipeline_error(make_module):
    name = make_module(
        """
        from kwheel import Computation, Pipeline

        class Nop(Computation):
            pass

        pipeline = Pipeline("broken")
        pipeline.stream("a", partitions=2, source=True)
        pipeline.computation("c", Nop, inputs=["a"], outputs=["nowhere"])
        """
    )
    with pytest.raises(PipelineError, match=r"computation 'c' writes unknown stream 'nowhere'"):
        load_pipeline(f"{name}:pipeline")


# regression: a factory's exception escaped raw (loader.py)
def test_factory_raising_is_a_load_error(make_module):
    name = make_module("def pipeline():\n    raise ValueError('cannot build')\n")
    with pytest.raises(LoadError, match=r"cannot build"):
        load_pipeline(f"{name}:pipeline")
