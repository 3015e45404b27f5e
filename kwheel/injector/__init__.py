"""Injection: bringing outside data into a pipeline's source streams, with a low watermark.

An injector process sends records into source streams and publishes, as a control record,
its low watermark: a promise that what it sends from now on is at or after that time
(anything older is late). Several processes of one injector each publish their own; a
computation reading the stream uses the min over them. Records carry ids, so an
at-least-once injector that re-sends after a crash is deduplicated downstream.

Public: ``Injector`` sends from your own code; ``run_injector`` runs an injector declared
with ``Pipeline.injector`` (what ``kwheel inject`` does); ``BoundedDisorder`` is the
watermark policy of declared injectors.
"""

from .policy import BoundedDisorder
from .process import Injector
from .run import run_injector

__all__ = ["BoundedDisorder", "Injector", "run_injector"]
