"""Benchmarks: `python -m bench [NAME ...] [--quick]` runs them and writes `bench/results/<name>.md/.json`."""
