"""Tests of mfwrap.data (a package so its modules can share strategies.py)."""
