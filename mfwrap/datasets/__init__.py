"""Reference structures and datasets."""
