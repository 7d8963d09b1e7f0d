"""Benchmarks: each module measures meshmon against a named baseline and prints a JSON line."""
