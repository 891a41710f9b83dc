"""Reliability and security tests: hostile files, interrupted work, bad inputs (``pytest -m reliability``)."""
