"""Plumbing shared by every layer: atomic file I/O, YAML config files, registries,
run locks, image grids."""
