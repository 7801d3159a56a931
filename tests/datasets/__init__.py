"""Tests of mfwrap.datasets."""
