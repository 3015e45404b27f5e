"""Testing kwheel pipelines.

- ``PipelineDriver`` runs a pipeline in this process without a broker, deterministically,
  on the worker's own processing code (kwheel/testing/driver.py).
- An embedded Kafka-protocol broker, worker processes and readers of committed output run
  it end to end (broker.py, processes.py, readers.py); the pytest plugin
  (kwheel.testing.pytest_plugin) offers both as fixtures.
"""

from .driver import END, PipelineDriver

__all__ = ["END", "PipelineDriver"]
