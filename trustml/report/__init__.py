"""Sweep summaries and Markdown/PNG reports of runs and sweeps."""
