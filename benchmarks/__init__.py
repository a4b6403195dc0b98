"""Benchmarks against the anchors: `make bench` or `python -m benchmarks`."""
