"""Benchmarks for graftune: accuracy and cost on real data, run by hand (not part of the test suite)."""
