"""Benchmarks and compile checks: scripts that print figures (not timed tests)."""
