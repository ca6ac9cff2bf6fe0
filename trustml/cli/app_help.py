"""``--help`` of the task apps (``trustml-generate``, ``trustml-synth``): what the app does, its input formats and
every option with its default, instead of Hydra's generic page.

The help is the app's module docstring (usage, inputs, outputs), any further docstrings that describe its input
formats, and its config file as shipped (``conf/<name>.yaml``: each option with its default and comment).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from importlib.resources import files
from types import ModuleType


def app_help(program: str, module: ModuleType, config_name: str, formats: Sequence[object] = ()) -> str:
    """The help text of ``program``: ``module``'s docstring, the docstrings of ``formats`` (modules or classes
    that describe its inputs and options), then its config."""
    parts = [program, inspect.cleandoc(module.__doc__ or "")]
    parts += [inspect.cleandoc(extra.__doc__ or "") for extra in formats]
    config = (files("trustml.conf") / f"{config_name}.yaml").read_text()
    parts.append(
        f"Options (conf/{config_name}.yaml as shipped; override any with key=value, add new keys with +key=value,\n"
        f"sweep with -m key=a,b; Hydra's own flags: {program} --hydra-help):\n\n{config}"
    )
    return "\n\n".join(parts)


def print_app_help(program: str, module: ModuleType, config_name: str, formats: Sequence[object] = ()) -> None:
    """Print :func:`app_help` to stdout."""
    sys.stdout.write(app_help(program, module, config_name, formats))
