"""Command-line entry points: ``trustml`` (Hydra app) and ``trustml-report``."""
