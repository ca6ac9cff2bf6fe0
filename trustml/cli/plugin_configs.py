"""Plugins selectable in Hydra before their modules are imported: only the plugins a run selects get imported.

A plugin's options dataclass enters Hydra's ConfigStore when its module runs ``@register`` (importing torch,
Lightning, scikit-learn, transformers, ... as that module needs). :func:`register_plugin_configs` lists every plugin
from the source index (:func:`trustml.registry.plugin_index`, no import) as a pending entry of its config group, and
the first time Hydra loads ``group/name`` the plugin's module is imported, which stores the real entry. Hydra sees
every plugin name (``trustml method=...`` and its error messages list them all) while a run imports only the
modules of the plugins it selects.
"""

from __future__ import annotations

import importlib
from typing import Any

from hydra.core.config_store import ConfigStore

from trustml.errors import ConfigError
from trustml.registry import plugin_index


class _PendingGroup(dict):
    """A config group of Hydra's ConfigStore (``file name -> ConfigNode``) whose pending entries import their
    plugin's module when first looked up; the module's ``@register`` stores the real entry.

    Hydra composes from a deep copy of the store, so a copy fetches the real entry from the live store
    (``ConfigStore.instance()``) after the import.
    """

    def __init__(self, group: str, entries: dict[str, Any]) -> None:
        super().__init__(entries)
        self.group = group
        self.pending: dict[str, str] = {}

    def add(self, file_name: str, module: str) -> None:
        """Make ``file_name`` (``name.yaml``) an entry that imports ``module`` when looked up."""
        if file_name not in self:
            self.pending[file_name] = module
            dict.__setitem__(self, file_name, None)

    def __setitem__(self, key: str, value: Any) -> None:
        if value is not None:  # a registration (a copy being made sets the pending entries' None again)
            self.pending.pop(key, None)
        dict.__setitem__(self, key, value)

    def __getitem__(self, key: str) -> Any:
        module = self.pending.pop(key, None)
        if module is not None:
            name = key.removesuffix(".yaml")
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - one message naming the plugin and the cause
                self.pending[key] = module
                raise ConfigError(f"{self.group}={name}: its module {module} cannot be imported: {exc}") from exc
            live = ConfigStore.instance().repo.get(self.group)
            node = dict.get(live, key) if isinstance(live, dict) else None
            if node is None:
                raise ConfigError(f"{self.group}={name}: {module} did not register it")
            dict.__setitem__(self, key, node)
        return dict.__getitem__(self, key)


def register_plugin_configs() -> None:
    """Make every indexed plugin (built-in packages and ``trustml.plugins`` entry points) selectable in Hydra,
    importing a plugin's module only when Hydra loads its config."""
    repo = ConfigStore.instance().repo
    for group, entries in plugin_index().items():
        current = repo.get(group)
        if not isinstance(current, _PendingGroup):
            current = repo[group] = _PendingGroup(group, current or {})
        for name, entry in entries.items():
            current.add(f"{name}.yaml", entry.module)
