"""Benchmarks (``make bench``): measured numbers, never tests.  See ``bench/run.py``."""
