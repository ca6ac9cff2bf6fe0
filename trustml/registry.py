"""Plugin registry: every technique is a class registered into a Hydra config group.

``@register(group, name, dataclass=Cfg)`` stores ``Cfg`` (plus ``_target_`` pointing at the class) in
Hydra's ConfigStore under ``group/name``, so ``trustml group=name`` selects it and ``group.field=value``
overrides are type-checked against the dataclass. Third-party packages add plugins through the
``trustml.plugins`` entry-point group; those modules are imported only when :func:`load_plugins` runs
(at CLI start-up), never at ``import trustml``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "trustml.plugins"

#: Config groups that hold registered plugins (other groups are plain YAML).
PLUGIN_GROUPS = ("data", "model", "method", "optimizer", "federation")

#: Modules that register the built-in plugins; imported by :func:`load_plugins`.
BUILTIN_PLUGIN_MODULES = (
    "trustml.data.digits",
    "trustml.data.text_classification",
    "trustml.data.topical_chat",
    "trustml.models.mlp",
    "trustml.models.hf_encoder",
    "trustml.methods.erm",
    "trustml.methods.pc",
    "trustml.methods.bct",
    "trustml.methods.lqf",
    "trustml.methods.seq2seq",
    "trustml.knobs.grounded_data",
    "trustml.knobs.seq2seq_model",
    "trustml.optim.torch_optimizers",
    "trustml.optim.dp",
    "trustml.federation.centralized",
    "trustml.federation.strategies",
)

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """What the registry knows about one plugin: where it lives and what it is."""

    group: str
    name: str
    target: str
    summary: str
    config_class: type | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, dict[str, PluginInfo]] = {}
_loaded = False


def _summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring as one line (a sentence cut by a line break stays whole)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


def _config_with_target(dc: type, target: str, partial: bool) -> type:
    """A subclass of dataclass ``dc`` that adds Hydra's ``_target_`` (and ``_partial_``) fields."""
    extra_fields: list[tuple[str, type, Any]] = [("_target_", str, field(default=target))]
    if partial:
        extra_fields.append(("_partial_", bool, field(default=True)))
    return dataclasses.make_dataclass(dc.__name__, extra_fields, bases=(dc,))


def register(
    group: str,
    name: str,
    dataclass: type | None = None,  # noqa: A002 - mirrors fairseq's register_model(name, dataclass=...)
    *,
    target: str | None = None,
    partial: bool = False,
    summary: str | None = None,
) -> Callable[[T], T]:
    """Register the decorated class (or ``target``) as plugin ``name`` of config group ``group``.

    ``dataclass`` holds the plugin's constructor arguments; it is stored in Hydra's ConfigStore as
    ``group/name`` with ``_target_`` set to the decorated object (or to ``target`` when given, e.g. a
    ``torch.optim`` class), and ``_partial_: true`` when ``partial`` (optimizers are built later with the
    parameters). Registering the same group/name twice with a different target is an error.
    """

    def decorator(obj: T) -> T:
        tgt = target or f"{obj.__module__}.{obj.__qualname__}"
        existing = _REGISTRY.get(group, {}).get(name)
        if existing is not None and existing.target != tgt:
            raise ValueError(
                f"plugin '{group}={name}' is already registered by {existing.target}; {tgt} must use another name"
            )
        node: Any = {"_target_": tgt}
        if dataclass is not None:
            node = _config_with_target(dataclass, tgt, partial)
        elif partial:
            node["_partial_"] = True
        ConfigStore.instance().store(group=group, name=name, node=node, provider="trustml")
        _REGISTRY.setdefault(group, {})[name] = PluginInfo(
            group=group,
            name=name,
            target=tgt,
            summary=summary if summary is not None else _summary(obj),
            config_class=dataclass,
        )
        return obj

    return decorator


def load_plugins() -> dict[str, dict[str, PluginInfo]]:
    """Import the built-in plugin modules and every ``trustml.plugins`` entry point (once).

    An entry point names a module (or any object: its module is what gets imported); importing it runs
    its ``@register`` decorators. A third-party plugin that fails to import is reported and skipped so
    that one broken package does not take the whole CLI down.
    """
    global _loaded
    if _loaded:
        return _REGISTRY
    for module in BUILTIN_PLUGIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a third-party plugin must not break the CLI
            log.warning("trustml plugin '%s' (%s) failed to load and is skipped: %s", ep.name, ep.value, exc)
    _loaded = True
    return _REGISTRY


def plugins(group: str | None = None) -> dict[str, dict[str, PluginInfo]] | dict[str, PluginInfo]:
    """The registered plugins: all groups, or one group's ``name -> PluginInfo``."""
    if group is None:
        return _REGISTRY
    return _REGISTRY.get(group, {})


def resolve_target(target: str) -> Any:
    """Import the object a dotted ``_target_`` path names (without instantiating it)."""
    module_name, _, attr = target.rpartition(".")
    parts = [attr]
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError:
            module_name, _, head = module_name.rpartition(".")
            parts.insert(0, head)
            continue
        for part in parts:
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"cannot import '{target}'")
