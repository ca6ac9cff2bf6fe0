"""``trustml --help GROUP=NAME``: one plugin's options with their types, defaults and descriptions.

The options of a registered plugin are the fields of its config dataclass (the ``dataclass=`` of
:func:`trustml.registry.register`), listed with their types and defaults after the dataclass's docstring, which
describes them. A YAML option (``trainer``, ``logger``, ``callbacks``, ...) is shown as its file. Only the module of
the plugin asked about is imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from importlib.resources import files

from trustml.registry import plugin_index, plugins


def _type_name(annotation: object) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return str(text).replace("typing.", "")


def _default(field: dataclasses.Field, owner: object | None) -> str:
    """The default of ``field``: its value in ``owner`` (the enclosing option's default) when given."""
    if owner is not None:
        return repr(getattr(owner, field.name))
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def _default_instance(field: dataclasses.Field, owner: object | None) -> object | None:
    """The default value of a nested options field (``None`` when it has none)."""
    if owner is not None:
        return getattr(owner, field.name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def option_rows(config: type, prefix: str = "", owner: object | None = None) -> list[tuple[str, str, str]]:
    """``(option, type, default)`` of every field of dataclass ``config``; a nested dataclass (a section such as
    ``federation.privacy``) is listed field by field as ``section.option``."""
    hints = typing.get_type_hints(config)
    rows = []
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        hint = hints.get(f.name, f.type)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows += option_rows(hint, f"{prefix}{f.name}.", _default_instance(f, owner))
        else:
            rows.append((f"{prefix}{f.name}", _type_name(hint), _default(f, owner)))
    return rows


def plugin_help(group: str, name: str) -> str:
    """The help of plugin ``group=name``: its summary, then one line per option (type, default, description)."""
    indexed = plugin_index().get(group, {})
    if name in indexed:
        importlib.import_module(indexed[name].module)
        info = plugins(group)[name]
        lines = [f"{group}={name}: {info.summary}", f"  ({info.target})"]
        config = info.config_class
        if config is None or not dataclasses.is_dataclass(config):
            lines.append("  no options")
            return "\n".join(lines) + "\n"
        for cls in reversed([c for c in config.__mro__ if dataclasses.is_dataclass(c) and "__doc__" in vars(c)]):
            doc = inspect.cleandoc(cls.__doc__ or "")
            if doc and not doc.startswith(f"{cls.__name__}("):  # not the dataclass's generated signature
                lines += ["", *(f"  {line}" if line else "" for line in doc.splitlines())]
        lines.append(f"\n  options ({group}.<option>=value), type = default:")
        rows = option_rows(config)
        width = max((len(option) for option, _, _ in rows), default=0)
        lines += [f"    {option:<{width}}  {kind} = {default}" for option, kind, default in rows]
        return "\n".join(lines) + "\n"
    yaml_file = files("trustml.conf") / group / f"{name}.yaml"
    if yaml_file.is_file():
        return f"{group}={name} (conf/{group}/{name}.yaml):\n\n{yaml_file.read_text()}"
    from trustml.cli.help import yaml_options

    known = sorted({*indexed, *yaml_options(group)})
    return f"unknown plugin {group}={name}; {group} options: {', '.join(known) or '(none)'}\n"
