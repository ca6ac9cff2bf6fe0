"""Errors that the CLI reports as one clear message (no traceback) with a non-zero exit."""

from __future__ import annotations


class TrustMLError(Exception):
    """Base of errors caused by the user's input: the message names the file/option and the fix."""


class ConfigError(TrustMLError, ValueError):
    """The composed configuration cannot work (bad option value, impossible combination of plugins)."""


class DataError(TrustMLError, ValueError):
    """A data file is missing or malformed; the message names the file (and line) and the fix."""


class CheckpointError(TrustMLError, ValueError):
    """A checkpoint or run directory is missing, unsafe to load, or incompatible with the current run."""
