"""Benchmarks of resnext_tf; each runs from the repository root as python -m benchmarks.NAME."""
