"""``trustml --help GROUP=NAME``: one plugin's options with their types, defaults and descriptions.

The options of a registered plugin are the fields of its config dataclass (the ``dataclass=`` of
:func:`trustml.registry.register`), listed with their types and defaults after the dataclass's docstring, which
describes them. A YAML option (``trainer``, ``logger``, ``callbacks``, ...) is shown as its file.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from importlib.resources import files

from trustml.registry import plugins


def _type_name(annotation: object) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return str(text).replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def plugin_help(group: str, name: str) -> str:
    """The help of plugin ``group=name``: its summary, then one line per option (type, default, description)."""
    registered = plugins(group)
    if name in registered:
        info = registered[name]
        lines = [f"{group}={name}: {info.summary}", f"  ({info.target})"]
        config = info.config_class
        if config is None or not dataclasses.is_dataclass(config):
            lines.append("  no options")
            return "\n".join(lines) + "\n"
        for cls in reversed([c for c in config.__mro__ if dataclasses.is_dataclass(c) and "__doc__" in vars(c)]):
            doc = inspect.cleandoc(cls.__doc__ or "")
            if doc and not doc.startswith(f"{cls.__name__}("):  # not the dataclass's generated signature
                lines += ["", *(f"  {line}" if line else "" for line in doc.splitlines())]
        hints = typing.get_type_hints(config)
        lines.append(f"\n  options ({group}.<option>=value), type = default:")
        fields = [f for f in dataclasses.fields(config) if not f.name.startswith("_")]
        width = max(len(f.name) for f in fields) if fields else 0
        lines += [f"    {f.name:<{width}}  {_type_name(hints.get(f.name, f.type))} = {_default(f)}" for f in fields]
        return "\n".join(lines) + "\n"
    yaml_file = files("trustml.conf") / group / f"{name}.yaml"
    if yaml_file.is_file():
        return f"{group}={name} (conf/{group}/{name}.yaml):\n\n{yaml_file.read_text()}"
    from trustml.cli.help import yaml_options

    known = sorted({*registered, *yaml_options(group)})
    return f"unknown plugin {group}={name}; {group} options: {', '.join(known) or '(none)'}\n"
