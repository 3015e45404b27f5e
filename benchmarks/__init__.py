"""kwheel benchmarks: ``python -m benchmarks.run`` (see docs/performance.md).

Speed is measured here and printed as JSON lines, never asserted in a timed test.
"""
