"""Benchmarks: `python -m bench.ingest` (backlog drain) and `pytest bench --benchmark-only` (micro)."""
