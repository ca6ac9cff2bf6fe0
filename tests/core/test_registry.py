"""The plugin registry: the contract per group, ConfigStore entries, discovery by package, entry points."""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from torch import nn

import trustml.methods
from tests.conftest import REPO_ROOT, compose_train
from trustml import registry
from trustml.errors import ConfigError
from trustml.plugin import GROUP_BASES, ModelPlugin, OptimizerPlugin
from trustml.registry import register
from trustml.runner import run


def forget(group: str, name: str) -> None:
    """Take a test's plugin out of the registry and Hydra's ConfigStore again."""
    registry.plugins(group).pop(name, None)  # type: ignore[call-overload]
    ConfigStore.instance().repo[group].pop(f"{name}.yaml", None)


@dataclass
class _ToyConfig:
    width: int = 3


def test_register_stores_typed_config_with_target() -> None:
    @register("model", "toy_for_test", dataclass=_ToyConfig)
    class Toy(ModelPlugin, nn.Module):
        """A toy model."""

    node = ConfigStore.instance().repo["model"]["toy_for_test.yaml"].node
    assert node._target_.endswith("Toy") and node.width == 3
    info = registry.plugins("model")["toy_for_test"]
    assert info.summary == "A toy model." and info.config_class is _ToyConfig
    assert Toy.config_class is _ToyConfig
    forget("model", "toy_for_test")


def test_a_class_that_does_not_fit_its_group_is_refused_with_the_reason() -> None:
    with pytest.raises(TypeError, match="method plugin .*Plain must subclass trustml.plugin.MethodPlugin"):

        @register("method", "plain_for_test", dataclass=_ToyConfig)
        class Plain:
            pass

    with pytest.raises(TypeError, match="must implement build"):

        @register("optimizer", "half_for_test", dataclass=_ToyConfig)
        class Half(OptimizerPlugin):
            pass

    with pytest.raises(TypeError, match="needs its options as a dataclass"):

        @register("model", "untyped_for_test", dataclass=dict)
        class Untyped(ModelPlugin, nn.Module):
            pass

    with pytest.raises(TypeError, match="'trainer' is not a plugin group"):

        @register("trainer", "x_for_test", dataclass=_ToyConfig)
        class NotAGroup(ModelPlugin):
            pass

    assert "plain_for_test" not in registry.plugins("method")


def test_a_target_that_is_no_plugin_of_its_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"optimizer._target_='torch.optim.Adam': .* must subclass"):
        registry.plugin_class("optimizer", {"_target_": "torch.optim.Adam"})


def test_same_name_for_another_class_is_refused() -> None:
    @register("model", "dup_for_test", dataclass=_ToyConfig)
    class A(ModelPlugin, nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):

        @register("model", "dup_for_test", dataclass=_ToyConfig)
        class B(ModelPlugin, nn.Module):
            pass

    forget("model", "dup_for_test")


def test_every_built_in_plugin_fits_its_group_and_the_source_index_matches_the_registry() -> None:
    loaded = registry.load_plugins()
    index = registry.plugin_index()
    for group, base in GROUP_BASES.items():
        assert loaded[group], f"no {group} plugin registered"
        built_in = {name: info for name, info in loaded[group].items() if info.target.startswith("trustml.")}
        for name, info in built_in.items():
            cls = registry.resolve_target(info.target)
            assert issubclass(cls, base) and cls.config_class is info.config_class
            entry = index[group][name]
            assert f"{entry.module}.{entry.qualname}" == info.target and entry.summary == info.summary


def test_entry_point_plugins_load_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "third_party_plugin.py").write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass

            from trustml.methods.base import ClassificationMethod
            from trustml.registry import register


            @dataclass
            class ThirdPartyConfig:
                strength: float = 1.0


            @register("method", "third_party", dataclass=ThirdPartyConfig)
            class ThirdParty(ClassificationMethod):
                """From another package."""
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = EntryPoint(name="tp", value="third_party_plugin", group=registry.ENTRY_POINT_GROUP)
    broken = EntryPoint(name="broken", value="no_such_module_xyz", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [good, broken])
    assert registry.plugin_index()["method"]["third_party"].summary == "From another package."
    assert "third_party_plugin" not in sys.modules  # listed from its source, not imported
    monkeypatch.setattr(registry, "_loaded", False)
    loaded = registry.load_plugins()
    assert "third_party" in loaded["method"]
    assert "third_party_plugin" in sys.modules
    assert "erm" in loaded["method"]
    forget("method", "third_party")


def test_the_readme_plugin_is_one_new_module_and_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "Writing a plugin" module, saved in a folder of the methods package, is found and trains."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Writing a plugin") :]
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    plugin_dir = tmp_path / "methods"
    plugin_dir.mkdir()
    (plugin_dir / "label_smoothing.py").write_text(source)
    monkeypatch.setattr(trustml.methods, "__path__", [*trustml.methods.__path__, str(plugin_dir)])
    monkeypatch.setattr(registry, "_loaded", False)
    assert registry.plugin_index()["method"]["label_smoothing"].qualname == "LabelSmoothing"

    registry.load_plugins()
    try:
        cfg = compose_train(["method=label_smoothing", "method.smoothing=0.2", "trainer.max_epochs=3"], tmp_path)
        assert cfg.method.smoothing == 0.2
        results = run(cfg).results
        assert results["test/acc"] >= 0.85, results
        with pytest.raises(ConfigError, match=r"method.smoothing must be in \[0, 1\), got 1.5"):
            run(compose_train(["method=label_smoothing", "method.smoothing=1.5"], tmp_path / "bad"))
    finally:
        sys.modules.pop("trustml.methods.label_smoothing", None)
        forget("method", "label_smoothing")


def test_resolve_target_imports_classes() -> None:
    from trustml.models.mlp import MLP

    assert registry.resolve_target("trustml.models.mlp.MLP") is MLP
    with pytest.raises(ImportError):
        registry.resolve_target("no_such_pkg_xyz.Thing")
