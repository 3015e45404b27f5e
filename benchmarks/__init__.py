"""kwheel benchmarks: ``python -m benchmarks.run`` (see docs/performance.md), one module per
figure (throughput, ceiling, latency, watermark, restore, memory, profiling), what they
share in ``common``; ``hotpath`` runs alone, without a broker.

Speed is measured here and printed as JSON lines, never asserted in a timed test.
"""
