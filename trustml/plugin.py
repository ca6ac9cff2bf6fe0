"""The plugin contract: one base class per config group, each plugin built from its config object.

A plugin is a class that subclasses its group's base (:class:`DataPlugin`, :class:`ModelPlugin`,
:class:`MethodPlugin`, :class:`OptimizerPlugin`, :class:`FederationPlugin`) and a dataclass holding its
options; ``@register(group, name, dataclass=Config)`` (:mod:`trustml.registry`) ties them to ``group=name``.
The runner builds it as ``Class(config, **runtime)``: ``config`` is the dataclass instance made from the
composed config (so the dataclass's ``__post_init__`` is where option checks live: they run once, before
anything is built) and ``runtime`` are the objects only known at run time:

- data: ``Class(config)``, a ``LightningDataModule`` (:class:`~trustml.data.base.TrustDataModule`);
- model: ``Class(config, num_classes=..., input_dim=...)``, an ``nn.Module``;
- method: ``Class(config, model=..., optimizer=..., num_classes=...)``, a ``LightningModule``;
- optimizer: ``Class(config)``, whose ``build(params)`` makes the ``torch.optim.Optimizer``;
- federation: ``Class(config)``, whose ``run(method, datamodule, make_trainer, ckpt_path)`` trains.

Every base declares the optional hooks with their defaults (:meth:`Plugin.validate_config` for checks that
need other groups' options, :meth:`Plugin.runtime_callbacks` for Lightning callbacks the plugin needs). This
module imports neither torch nor Lightning, so that listing plugins stays fast.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig


class Plugin:
    """Base of every plugin: ``config`` is its options dataclass instance; the hooks below have defaults."""

    #: The config group this base stands for (set on each group base).
    group: ClassVar[str] = ""
    #: The options dataclass given to ``@register`` (set by the registry).
    config_class: ClassVar[type | None] = None

    config: Any

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Raise :class:`~trustml.errors.ConfigError` when the whole composed ``cfg`` cannot work with this
        plugin (checks that involve other groups; the plugin's own options are checked by its dataclass)."""

    @classmethod
    def runtime_callbacks(cls, cfg: DictConfig, datamodule: Any) -> list[Any]:
        """Lightning callbacks this plugin needs in the run (none by default)."""
        return []


class DataPlugin(Plugin):
    """A data set as a ``LightningDataModule``; built as ``Class(config)``."""

    group: ClassVar[str] = "data"
    #: What a batch's ``x`` holds: ``features`` (a float tensor), ``text`` (strings) or ``seq2seq``.
    input_kind: ClassVar[str] = "features"


class ModelPlugin(Plugin):
    """A network as an ``nn.Module``; built as ``Class(config, num_classes=..., input_dim=...)``."""

    group: ClassVar[str] = "model"
    #: Input kinds of the data this model can read; ``None`` accepts any.
    accepted_input_kinds: ClassVar[frozenset[str] | None] = None


class MethodPlugin(Plugin):
    """A training objective as a ``LightningModule``; built as ``Class(config, model=, optimizer=, num_classes=)``."""

    group: ClassVar[str] = "method"
    #: Input kinds of the data this method can train on.
    supported_input_kinds: ClassVar[frozenset[str]] = frozenset({"features", "text"})


class OptimizerPlugin(Plugin):
    """Builds the optimizer of the trained parameters; built as ``Class(config)``, then ``build(params)``.

    ``needs_per_sample_gradients`` is the one place that says whether the optimizer needs per-sample gradients (DP-SGD):
    then the method hands it its per-sample loss instead of calling ``backward`` (see
    :class:`trustml.privacy.optimizers.PerSampleGradientOptimizer`).
    """

    group: ClassVar[str] = "optimizer"
    needs_per_sample_gradients: ClassVar[bool] = False

    @abstractmethod
    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer of ``params`` with this plugin's options."""

    def training_data(self, datamodule: Any, seed: int) -> Any:
        """The data module this optimizer trains on: ``datamodule`` itself by default. An optimizer that needs
        another sampling of the training data (DP-SGD: Poisson sampling) returns a view of it that samples so,
        leaving ``datamodule`` unchanged; ``seed`` is the run seed."""
        return datamodule

    def __call__(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Same as :meth:`build`: an optimizer plugin is the factory a method calls with its parameters."""
        return self.build(params)


@dataclass
class FitResult:
    """What a federation plugin's ``run`` hands back: the trainer that tests the trained method, and the
    federation's own final figures for ``results.json`` (rounds run, clients retired, privacy spent, ...)."""

    trainer: Any
    results: dict[str, Any] = field(default_factory=dict)


class FederationPlugin(Plugin):
    """How ``fit`` runs: centrally (``federation=none``) or over simulated clients; built as ``Class(config)``."""

    group: ClassVar[str] = "federation"

    @abstractmethod
    def run(self, method: Any, datamodule: Any, make_trainer: Any, ckpt_path: str | None = None) -> FitResult:
        """Train ``method`` on ``datamodule`` (resuming from ``ckpt_path`` when given) with trainers from
        ``make_trainer(**overrides)``."""


#: The base class of each plugin group.
GROUP_BASES: dict[str, type[Plugin]] = {
    base.group: base for base in (DataPlugin, ModelPlugin, MethodPlugin, OptimizerPlugin, FederationPlugin)
}

#: Config groups that hold registered plugins (other groups are plain YAML).
PLUGIN_GROUPS: tuple[str, ...] = tuple(GROUP_BASES)
