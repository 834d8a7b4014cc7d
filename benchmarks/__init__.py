"""Benchmarks (`make bench`): side-by-side measurements printed as ratios; not part of `make test`."""
