"""Running computations: tasks, the per-record context, workers and their processes."""
