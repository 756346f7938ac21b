"""Tests across simulated login nodes (a package, so its conftest does not shadow tests/conftest.py)."""
