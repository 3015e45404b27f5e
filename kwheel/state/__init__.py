"""Per-task state: the RocksDB store, its key layout, and its changelog."""
