"""Benchmarks of modelserve, each figure beside a baseline measured in the same run (`python -m bench`).

Benchmarks are not tests: they report numbers and PASS/MISS against targets, they do not assert.
See `docs/benchmarks.md`.
"""
