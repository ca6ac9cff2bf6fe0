"""Plugin registry: every technique is a class registered into a Hydra config group.

``@register(group, name, dataclass=Config)`` checks that the decorated class fits its group (it subclasses the
group's base from :mod:`trustml.plugin` and implements its abstract methods) and stores ``Config`` (plus
``_target_`` naming the class) in Hydra's ConfigStore under ``group/name``, so ``trustml group=name`` selects it
and ``group.field=value`` overrides are type-checked against the dataclass. :func:`build_plugin` makes the
dataclass instance from the composed config and builds ``Class(config, **runtime)``.

Built-in plugins are found by package: every module of :data:`PLUGIN_PACKAGES` that registers a plugin is
imported by :func:`load_plugins`, so a new plugin is one new module and nothing else. Third-party packages add
plugins through the ``trustml.plugins`` entry-point group. :func:`plugin_index` lists plugins (group, name,
summary) by reading the modules' source without importing them (no torch), for ``trustml --help``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore

from trustml.errors import ConfigError, TrustMLError
from trustml.plugin import GROUP_BASES, PLUGIN_GROUPS, Plugin

log = logging.getLogger(__name__)

__all__ = ["PLUGIN_GROUPS", "PluginInfo", "build_plugin", "load_plugins", "plugin_index", "plugins", "register"]

ENTRY_POINT_GROUP = "trustml.plugins"

#: Packages whose modules hold the built-in plugins (every module that registers one is imported).
PLUGIN_PACKAGES = (
    "trustml.data",
    "trustml.models",
    "trustml.methods",
    "trustml.optim",
    "trustml.privacy",
    "trustml.federation",
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
    return _first_paragraph(doc)


def _first_paragraph(doc: str) -> str:
    return " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())


def _config_with_target(dc: type, target: str) -> type:
    """A subclass of dataclass ``dc`` that adds Hydra's ``_target_`` field."""
    return dataclasses.make_dataclass(dc.__name__, [("_target_", str, field(default=target))], bases=(dc,))


def check_plugin_class(group: str, cls: Any, config_class: Any) -> None:
    """Raise ``TypeError`` naming the reason when ``cls`` (with options ``config_class``) is no ``group`` plugin."""
    base = GROUP_BASES.get(group)
    name = getattr(cls, "__qualname__", repr(cls))
    if base is None:
        raise TypeError(f"'{group}' is not a plugin group; plugin groups are {', '.join(PLUGIN_GROUPS)}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{group} plugin {name} must subclass {base.__module__}.{base.__qualname__}")
    missing = sorted(attr for attr in dir(cls) if getattr(getattr(cls, attr, None), "__isabstractmethod__", False))
    if missing:
        raise TypeError(f"{group} plugin {name} must implement {', '.join(missing)}")
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(
            f"{group} plugin {name} needs its options as a dataclass: @register('{group}', ..., "
            f"dataclass=<a @dataclass>), got {config_class!r}"
        )


def register(group: str, name: str, dataclass: type) -> Callable[[T], T]:  # noqa: A002 - fairseq's spelling
    """Register the decorated class as plugin ``name`` of config group ``group``, with options ``dataclass``.

    The class must subclass the group's base (:data:`trustml.plugin.GROUP_BASES`); it is built as
    ``Class(config, **runtime)`` with ``config`` an instance of ``dataclass``. ``dataclass`` is stored in
    Hydra's ConfigStore as ``group/name`` with ``_target_`` set to the class. Registering the same group/name
    twice with a different class is an error.
    """

    def decorator(cls: T) -> T:
        check_plugin_class(group, cls, dataclass)
        target = f"{cls.__module__}.{cls.__qualname__}"
        existing = _REGISTRY.get(group, {}).get(name)
        if existing is not None and existing.target != target:
            raise ValueError(
                f"plugin '{group}={name}' is already registered by {existing.target}; {target} must use another name"
            )
        cls.config_class = dataclass  # type: ignore[attr-defined]
        node = _config_with_target(dataclass, target)
        ConfigStore.instance().store(group=group, name=name, node=node, provider="trustml")
        _REGISTRY.setdefault(group, {})[name] = PluginInfo(
            group=group, name=name, target=target, summary=_summary(cls), config_class=dataclass
        )
        return cls

    return decorator


def _package_modules() -> Iterator[tuple[str, Path]]:
    """``(module name, source file)`` of every module in :data:`PLUGIN_PACKAGES` (found without importing)."""
    for package in PLUGIN_PACKAGES:
        for location in importlib.import_module(package).__path__:  # the packages' __init__ modules are empty
            for info in pkgutil.iter_modules([location]):
                path = Path(location) / (f"{info.name}/__init__.py" if info.ispkg else f"{info.name}.py")
                if path.is_file():
                    yield f"{package}.{info.name}", path


@dataclass(frozen=True)
class IndexEntry:
    """A plugin found in a module's source: ``@register("group", "name", ...)`` on class ``qualname``."""

    group: str
    name: str
    module: str
    qualname: str
    summary: str


def _registrations(module: str, source: str) -> list[IndexEntry]:
    """The ``@register("group", "name", ...)`` decorations of top-level classes in ``source``."""
    if "register(" not in source:
        return []
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "register"):
                continue
            args = decorator.args[:2]
            if len(args) == 2 and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                group, name = (a.value for a in args)  # type: ignore[union-attr]
                summary = _first_paragraph(ast.get_docstring(node) or "")
                found.append(IndexEntry(group, name, module, node.name, summary))
    return found


def _entry_point_modules() -> Iterator[tuple[str, Any]]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        yield ep.value.split(":")[0], ep


def plugin_index() -> dict[str, dict[str, IndexEntry]]:
    """Every plugin, ``group -> name -> IndexEntry``, read from module sources without importing them.

    Covers the built-in packages and the ``trustml.plugins`` entry points; plugins registered by
    :func:`register` since (e.g. by a module imported by hand) are added from the registry.
    """
    index: dict[str, dict[str, IndexEntry]] = {}
    sources = list(_package_modules())
    for module, _ in _entry_point_modules():
        spec = importlib.util.find_spec(module) if module else None
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            sources.append((module, Path(spec.origin)))
    for module, path in sources:
        for entry in _registrations(module, path.read_text(encoding="utf-8")):
            index.setdefault(entry.group, {})[entry.name] = entry
    for group, named in _REGISTRY.items():
        for name, info in named.items():
            module, _, qualname = info.target.rpartition(".")
            index.setdefault(group, {}).setdefault(name, IndexEntry(group, name, module, qualname, info.summary))
    return index


def load_plugins() -> dict[str, dict[str, PluginInfo]]:
    """Import every built-in plugin module and every ``trustml.plugins`` entry point (once).

    A built-in module is imported when its source registers a plugin. An entry point names a module (or any
    object: its module is what gets imported); importing it runs its ``@register`` decorators. A third-party
    plugin that fails to import is reported and skipped so that one broken package does not take the whole CLI
    down.
    """
    global _loaded
    if _loaded:
        return _REGISTRY
    for module, path in _package_modules():
        if _registrations(module, path.read_text(encoding="utf-8")):
            importlib.import_module(module)
    for _, ep in _entry_point_modules():
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


def plugin_config(group: str, node: Any) -> Any:
    """The options dataclass instance of config node ``node`` (its checks in ``__post_init__`` run here).

    ``node`` is a composed structured config (``OmegaConf.to_object`` makes the dataclass) or, for a plugin
    selected by ``_target_`` alone, a plain node whose keys become the class's ``config_class`` fields. A wrong
    option (an unknown field, a value of the wrong type) is a :class:`ConfigError` naming the group.
    """
    from omegaconf import DictConfig, OmegaConf

    cls = plugin_class(group, node)
    try:
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) not in (None, dict):
            return OmegaConf.to_object(node)
        options = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        options.pop("_target_", None)
        return cls.config_class(**options)  # type: ignore[misc]
    except TrustMLError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{group}: {exc}") from None


def plugin_class(group: str, node: Any) -> type[Plugin]:
    """The plugin class ``node._target_`` names, checked against its group's base."""
    target = str(node["_target_"]) if "_target_" in node else None
    if target is None:
        raise ConfigError(f"config group '{group}' is not selected; add {group}=<plugin> (see trustml --help)")
    try:
        cls = resolve_target(target)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{group}._target_='{target}' cannot be imported: {exc}") from None
    try:
        check_plugin_class(group, cls, getattr(cls, "config_class", None))
    except TypeError as exc:
        raise ConfigError(
            f"{group}._target_='{target}': {exc}; register it with @register('{group}', NAME, "
            "dataclass=...) (see the README's 'Writing a plugin')"
        ) from None
    return cls


def construct_plugin(group: str, cls: type[Plugin], config: Any, **runtime: Any) -> Any:
    """``cls(config, **runtime)``; a ``TypeError``/``ValueError`` raised while building it is a ConfigError."""
    try:
        return cls(config, **runtime)  # type: ignore[call-arg]
    except TrustMLError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{group}: {exc}") from None


def build_plugin(group: str, node: Any, **runtime: Any) -> Any:
    """Build the plugin of config ``node`` as ``Class(config, **runtime)`` (see :mod:`trustml.plugin`)."""
    return construct_plugin(group, plugin_class(group, node), plugin_config(group, node), **runtime)


@dataclass
class AssembledPlugins:
    """The plugins of one experiment, wired together (:func:`assemble_plugins`)."""

    datamodule: Any
    model: Any
    optimizer: Any
    method: Any
    federation: Any


def assemble_plugins(classes: dict[str, type[Plugin]], configs: dict[str, Any], seed: int) -> AssembledPlugins:
    """Build and wire the plugins of one experiment in the contract's order (:mod:`trustml.plugin`): the data
    (set up for fitting), the model (sized by the data; text data is featurized by it), the optimizer (which may
    replace the data by its training view, e.g. Poisson sampling), the method (given model and optimizer) and the
    federation. The caller seeds the random generators first; every process that assembles the same config with
    the same seed gets the same splits and initial model."""
    datamodule = construct_plugin("data", classes["data"], configs["data"])
    datamodule.setup("fit")
    model = construct_plugin(
        "model", classes["model"], configs["model"], num_classes=datamodule.num_classes, input_dim=datamodule.input_dim
    )
    if datamodule.input_kind == "text":
        datamodule.map_inputs(model.featurize)
    optimizer = construct_plugin("optimizer", classes["optimizer"], configs["optimizer"])
    datamodule = optimizer.training_data(datamodule, seed=seed)
    method = construct_plugin(
        "method",
        classes["method"],
        configs["method"],
        model=model,
        optimizer=optimizer,
        num_classes=datamodule.num_classes,
    )
    federation = construct_plugin("federation", classes["federation"], configs["federation"])
    return AssembledPlugins(datamodule, model, optimizer, method, federation)
