"""Pipelines that must be rejected at load time, one problem each."""

from kwheel import Computation, Pipeline


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def unknown_stream():
    p = Pipeline("broken")
    p.stream("a", partitions=2, source=True)
    p.computation("c", Nop, inputs=["a"], outputs=["nowhere"])
    return p


raise_on_import = None  # tests/pipelines/explodes.py raises on import
