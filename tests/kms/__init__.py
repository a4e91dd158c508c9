"""Tests of the KMS backend (a package, so its conftest never shadows tests/conftest.py)."""
