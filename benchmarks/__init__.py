"""Benchmarks for autopar (run as scripts, e.g. ``python -m benchmarks.planning_time``)."""
