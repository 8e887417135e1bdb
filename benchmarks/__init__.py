"""Standalone benchmarks: scripts run by hand (`python -m benchmarks.NAME`), never by the test suite."""
