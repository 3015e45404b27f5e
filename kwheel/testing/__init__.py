"""Helpers for testing kwheel pipelines: an embedded Kafka broker, readers of committed output."""
