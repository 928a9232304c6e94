"""Benchmarks: every backend beside its raw client, in one run (``nox -s bench``)."""
