"""Resolve ``module:attribute`` references to a validated Pipeline."""

from __future__ import annotations

import importlib
import os
import sys

from .errors import KwheelError, LoadError
from .pipeline import Pipeline


def load_pipeline(ref: str) -> Pipeline:
    """Import ``module:attribute`` (the current directory is importable) and validate it."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(
            f"bad pipeline reference {ref!r}: expected module:attribute, e.g. examples.counter:pipeline"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise LoadError(
                f"cannot import pipeline module {module_name!r}: no module named {e.name!r}"
            ) from None
        raise LoadError(
            f"pipeline module {module_name!r} failed to import: {type(e).__name__}: {e}"
        ) from None
    except KwheelError as e:
        raise LoadError(f"pipeline module {module_name!r}: {e}") from None
    except Exception as e:
        raise LoadError(
            f"pipeline module {module_name!r} failed to import: {type(e).__name__}: {e}"
        ) from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise LoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, Pipeline):
        try:
            obj = obj()
        except KwheelError as e:
            raise LoadError(f"{ref}: {e}") from None
        except Exception as e:
            raise LoadError(f"pipeline factory {ref} failed: {type(e).__name__}: {e}") from None
    if not isinstance(obj, Pipeline):
        raise LoadError(f"{ref} is a {type(obj).__name__}, not a kwheel Pipeline")
    return obj.validate()
