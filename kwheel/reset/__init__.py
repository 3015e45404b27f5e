"""Resetting computations (``kwheel reset``): their consumer groups' offsets, changelogs,
published watermarks and local stores are deleted, so they process their inputs again from
the start. ``plan_reset`` works out what from the graph; ``execute`` carries it out."""

from .plan import ResetPlan, plan_reset
from .run import check_stopped, execute

__all__ = ["ResetPlan", "check_stopped", "execute", "plan_reset"]
