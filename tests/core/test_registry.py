"""The plugin registry: ConfigStore entries, duplicate names, entry-point plugins."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

from trustml import registry
from trustml.registry import register


@dataclass
class _ToyConfig:
    width: int = 3


def test_register_stores_typed_config_with_target() -> None:
    @register("model", "toy_for_test", dataclass=_ToyConfig)
    class Toy:
        """A toy model."""

    node = ConfigStore.instance().repo["model"]["toy_for_test.yaml"].node
    assert node._target_.endswith("Toy") and node.width == 3
    info = registry.plugins("model")["toy_for_test"]
    assert info.summary == "A toy model." and info.config_class is _ToyConfig


def test_partial_plugins_get_partial_flag() -> None:
    registry.load_plugins()
    node = ConfigStore.instance().repo["optimizer"]["adam.yaml"].node
    assert node._target_ == "torch.optim.Adam" and node._partial_ is True


def test_same_name_for_another_class_is_refused() -> None:
    @register("method", "dup_for_test")
    class A:
        pass

    with pytest.raises(ValueError, match="already registered"):

        @register("method", "dup_for_test")
        class B:
            pass


def test_entry_point_plugins_load_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "third_party_plugin.py").write_text(
        textwrap.dedent(
            '''
            from trustml.registry import register

            @register("method", "third_party")
            class ThirdParty:
                """From another package."""
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = EntryPoint(name="tp", value="third_party_plugin", group=registry.ENTRY_POINT_GROUP)
    broken = EntryPoint(name="broken", value="no_such_module_xyz", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [good, broken])
    monkeypatch.setattr(registry, "_loaded", False)
    assert "third_party_plugin" not in sys.modules
    loaded = registry.load_plugins()
    assert "third_party" in loaded["method"]
    assert "third_party_plugin" in sys.modules
    assert "erm" in loaded["method"]


def test_resolve_target_imports_classes() -> None:
    from trustml.models.mlp import MLP

    assert registry.resolve_target("trustml.models.mlp.MLP") is MLP
    with pytest.raises(ImportError):
        registry.resolve_target("no_such_pkg_xyz.Thing")
