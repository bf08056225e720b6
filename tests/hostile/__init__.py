"""Hostile and careless input: generated model files, options and paths that must each be
refused with one line (exit 2), without a traceback and without allocating much."""
