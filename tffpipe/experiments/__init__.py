"""Experiments: sweeps of runs over settings and seeds, and their summaries (`python -m tffpipe.sweep`)."""
