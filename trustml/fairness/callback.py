"""The ``fairness`` callback: group, counterfactual and prediction-sensitivity metrics of the tested model.

Enable it with ``trustml callbacks=fairness ...`` (``conf/callbacks/fairness.yaml``: the default callbacks plus
this one; options ``callbacks.fairness.<option>=...``). When the run's ``trainer.test`` ends (on the best
checkpoint, after training), :class:`FairnessMetrics` measures the model on the data module's TEST split and
hands ``fairness/...`` keys to ``results.json`` through ``final_results()``. The measurement is
:func:`trustml.fairness.extrinsic.measure_extrinsic`, shared with ``trustml-fairness run_dir=<run>`` (which scores
a finished run's test split the same way); this module only wires it to a run.

- Protected attribute: ``protected_column=<name>`` takes a group column of the test split (``Split.groups``);
  ``protected_column=proxy`` derives the gender proxy from the test texts (:func:`gender_proxy`: ``male``,
  ``female``, ``both``, ``none``; a noisy proxy, see its docstring). Groups listed in ``exclude_groups`` (default
  ``[none, both]`` for the proxy, none for a column) are left out of the group metrics and of the
  protected-status model: a text that mentions no one, or both genders, belongs to no compared group. Every
  group's size is reported (``fairness/count/<group>``), excluded ones included.
- Always ``fairness/n_test``, ``fairness/n_compared`` and ``fairness/overall_accuracy`` (over all test rows).
- Group metrics (:func:`group_metrics`): ``fairness/accuracy/<group>``, ``fairness/f1_macro/<group>``,
  ``fairness/accuracy_difference``, ``fairness/f1_macro_difference``,
  ``fairness/demographic_parity_difference``, ``fairness/equalized_odds_difference``. Fewer than two compared
  groups: ``fairness/skipped_group_metrics`` holds the reason instead (no NaN).
- Counterfactual (text data; :func:`counterfactual_metrics`): every test text with its protected words swapped,
  turned into model inputs by the model's ``featurize`` (as the runner does for the data), and the class
  probabilities on both compared over the texts the swap changed: ``fairness/flip_rate``,
  ``fairness/mean_abs_prob_change``, ``fairness/mean_total_variation``, ``fairness/cf_n_changed``,
  ``fairness/cf_n_flipped``. No changed text: ``fairness/skipped_counterfactual``.
- Accumulated prediction sensitivity (Krishna et al. 2022; :mod:`trustml.fairness.sensitivity`). A
  protected-status model (logistic regression, :func:`train_protected_model`) is trained on the test inputs of
  the compared groups, and ``APS`` averages ``PS(x) = w^T |J| v`` over all test inputs (or a seeded
  uniform sample of ``sensitivity_max_samples`` of them). The input features are
  (``fairness/aps_input_space``): ``features`` when the test inputs are a tensor ``[N, D]`` (``model=hf_encoder``
  with cached sentence embeddings, ``model=mlp``); ``word_embeddings`` when they are the token ids of a
  ``model=hf_encoder`` classifier (a trained or uncached encoder): gradients with respect to each token's
  looked-up word embedding (:func:`token_prediction_sensitivity`), the protected-status model reading the
  mean-pooled word embeddings (:func:`pooled_input_embeddings`). ``sensitivity_weights``: the class weights
  ``w`` (``uniform``: ``1/C`` each, C backward passes per batch; ``predicted``: the predicted class only, one
  backward pass). Results ``fairness/aps``, ``fairness/aps_std``, ``fairness/aps_n``,
  ``fairness/aps_protected_model_acc`` (its training accuracy), ``fairness/aps_input_space``,
  ``fairness/aps_class_weights``. Other inputs or fewer than two groups: ``fairness/skipped_aps``.

The raw test texts: the runner replaces every split's texts by model inputs (``datamodule.map_inputs(
model.featurize)``) before any callback exists; the data module keeps the texts as read in ``raw_texts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from trustml.data.base import TrustDataModule
from trustml.errors import ConfigError
from trustml.fairness.extrinsic import (
    PROXY,
    FairnessOptions,
    check_data,
    measure_extrinsic,
    raw_test_texts,
)


class FairnessMetrics(pl.Callback):
    """Group, counterfactual and sensitivity metrics of the model on the test split, for ``results.json``.

    See the module docstring for what is measured, the result keys and how skipped measurements are recorded.
    """

    def __init__(
        self,
        protected_column: str = PROXY,
        counterfactual: bool = True,
        sensitivity: bool = True,
        word_pairs: str | None = None,
        exclude_groups: Sequence[str] | None = None,
        batch_size: int = 256,
        sensitivity_weights: str = "uniform",
        sensitivity_batch_size: int = 32,
        sensitivity_max_samples: int | None = None,
    ) -> None:
        self.options = FairnessOptions(
            protected_column=protected_column,
            counterfactual=counterfactual,
            sensitivity=sensitivity,
            word_pairs=word_pairs,
            exclude_groups=None if exclude_groups is None else list(exclude_groups),
            batch_size=batch_size,
            sensitivity_weights=sensitivity_weights,
            sensitivity_batch_size=sensitivity_batch_size,
            sensitivity_max_samples=sensitivity_max_samples,
        )
        self.results: dict[str, Any] = {}

    # --- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the options against the data before training starts (a wrong column fails the run early)."""
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, TrustDataModule) and datamodule.splits:
            self.check_data(datamodule)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, TrustDataModule):
            raise ConfigError("callbacks.fairness needs the run's data module at test time (trainer.test(datamodule=))")
        model = getattr(pl_module, "model", pl_module)
        # Lightning tests under inference mode; the APS needs gradients
        with torch.inference_mode(False), torch.enable_grad():
            self.results = self.measure(model, datamodule, pl_module.device)

    def final_results(self) -> dict[str, Any]:
        """The ``fairness/...`` results of the last test (empty before any)."""
        return dict(self.results)

    # --- the measurement -----------------------------------------------------------------------------
    def check_data(self, datamodule: TrustDataModule) -> None:
        """Raise :class:`ConfigError` when the options cannot work on ``datamodule``'s test split."""
        groups = list(datamodule.splits["test"].groups)
        check_data(self.options, datamodule.input_kind, groups, type(datamodule).__name__)

    def measure(self, model: nn.Module, datamodule: TrustDataModule, device: torch.device) -> dict[str, Any]:
        """Every enabled measurement on the test split of ``datamodule`` (:func:`measure_extrinsic`)."""
        self.check_data(datamodule)
        texts = raw_test_texts(datamodule) if datamodule.input_kind == "text" else None
        test = datamodule.splits["test"]
        return measure_extrinsic(model, test, texts, datamodule.label_names, self.options, device)
