"""Benchmarks: run with `make bench` or `make bench-quick`; never part of `make test`."""
