"""``python -m benchmarks [FIGURE ...] [options]`` is ``python -m benchmarks.run``."""

from .run import main

main()
