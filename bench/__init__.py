"""Benchmarks: standalone scripts, never imported by the tests."""
