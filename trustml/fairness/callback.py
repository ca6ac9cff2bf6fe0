"""The ``fairness`` callback: group, counterfactual and prediction-sensitivity metrics of the tested model.

Enable it with ``trustml callbacks=fairness ...`` (``conf/callbacks/fairness.yaml``: the default callbacks plus
this one; options ``callbacks.fairness.<option>=...``). When the run's ``trainer.test`` ends (on the best
checkpoint, after training), :class:`FairnessMetrics` measures the model on the data module's TEST split and
hands ``fairness/...`` keys to ``results.json`` through ``final_results()``. The formulas live in
:mod:`trustml.fairness.group_metrics`, :mod:`trustml.fairness.counterfactual` and
:mod:`trustml.fairness.sensitivity`; this module only wires them to a run.

- Protected attribute: ``protected_column=<name>`` takes a group column of the test split (``Split.groups``);
  ``protected_column=proxy`` derives the gender proxy from the test texts (:func:`gender_proxy`: ``male``,
  ``female``, ``both``, ``none``; a noisy proxy, see its docstring). Groups listed in ``exclude_groups`` (default
  ``[none, both]`` for the proxy, none for a column) are left out of the group metrics and of the
  protected-status model: a text that mentions no one, or both genders, belongs to no compared group. Every
  group's size is reported (``fairness/count/<group>``), excluded ones included.
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from trustml.data.base import Inputs, TrustDataModule, num_rows, take
from trustml.errors import ConfigError, DataError
from trustml.fairness.counterfactual import (
    counterfactual_metrics,
    counterfactual_texts,
    gender_proxies,
    load_word_pairs,
)
from trustml.fairness.group_metrics import group_metrics
from trustml.fairness.sensitivity import (
    accumulated_prediction_sensitivity,
    pooled_input_embeddings,
    token_prediction_sensitivity,
    train_protected_model,
)

PROXY = "proxy"
PREFIX = "fairness/"


@dataclass
class FairnessOptions:
    """Options of the ``fairness`` callback (``callbacks.fairness.<option>``); checked when built.

    ``protected_column``: a group column of the test split, or ``proxy`` (the gender proxy of the test texts).
    ``counterfactual``: measure counterfactual flips (text data only). ``sensitivity``: measure the APS (feature
    inputs or the token ids of ``model=hf_encoder``; skipped with the reason otherwise). ``word_pairs``: the
    word-pair YAML for the proxy and the swaps (default the shipped gender list). ``exclude_groups``: groups not
    compared (default ``[none, both]`` for the proxy, ``[]`` for a column). ``batch_size``: inference batch size.
    ``sensitivity_weights``: ``uniform`` or ``predicted`` class weights of the APS. ``sensitivity_max_samples``:
    average the APS over a seeded uniform sample of this many test inputs (null: all of them).
    ``sensitivity_batch_size``: texts per APS batch on token inputs (each holds the encoder's activations for
    ``C + 1`` backward passes).
    """

    protected_column: str = PROXY
    counterfactual: bool = True
    sensitivity: bool = True
    word_pairs: str | None = None
    exclude_groups: list[str] | None = None
    batch_size: int = 256
    sensitivity_weights: str = "uniform"
    sensitivity_batch_size: int = 32
    sensitivity_max_samples: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.protected_column, str) or not self.protected_column:
            raise ConfigError(
                "callbacks.fairness.protected_column must name a group column of the test split or be proxy"
            )
        if self.batch_size < 1:
            raise ConfigError(f"callbacks.fairness.batch_size must be >= 1, got {self.batch_size}")
        if self.sensitivity_weights not in ("uniform", "predicted"):
            raise ConfigError(
                f"callbacks.fairness.sensitivity_weights={self.sensitivity_weights!r}: choose uniform (w_c = 1/C over "
                "the classes) or predicted (the predicted class only)"
            )
        if self.sensitivity_max_samples is not None and self.sensitivity_max_samples < 1:
            raise ConfigError(
                f"callbacks.fairness.sensitivity_max_samples must be >= 1 (or null: every test input), got "
                f"{self.sensitivity_max_samples}"
            )
        if self.sensitivity_batch_size < 1:
            raise ConfigError(
                f"callbacks.fairness.sensitivity_batch_size must be >= 1, got {self.sensitivity_batch_size}"
            )
        if self.exclude_groups is None:
            self.exclude_groups = ["none", "both"] if self.protected_column == PROXY else []
        self.exclude_groups = [str(g) for g in self.exclude_groups]
        if self.word_pairs is not None or self.protected_column == PROXY or self.counterfactual:
            try:
                load_word_pairs(self.word_pairs)
            except ConfigError as exc:
                raise ConfigError(f"callbacks.fairness.word_pairs: {exc}") from None


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
        o = self.options
        name = type(datamodule).__name__
        text = datamodule.input_kind == "text"
        if o.protected_column == PROXY and not text:
            raise ConfigError(
                f"callbacks.fairness.protected_column=proxy derives the attribute from texts, but {name} yields "
                f"'{datamodule.input_kind}' inputs; name one of its test split's group columns "
                f"{sorted(datamodule.splits['test'].groups)}"
            )
        if o.counterfactual and not text:
            raise ConfigError(
                f"callbacks.fairness.counterfactual=true swaps words in texts, but {name} yields "
                f"'{datamodule.input_kind}' inputs; set callbacks.fairness.counterfactual=false"
            )
        columns = sorted(datamodule.splits["test"].groups)
        if o.protected_column != PROXY and o.protected_column not in columns:
            raise ConfigError(
                f"callbacks.fairness.protected_column={o.protected_column!r} is not a group column of {name}'s test "
                f"split (it has {columns or 'none'}); name one of them"
                + (" or use proxy (the gender proxy of the texts)" if text else "")
            )

    def measure(self, model: nn.Module, datamodule: TrustDataModule, device: torch.device) -> dict[str, Any]:
        """Every enabled measurement on the test split of ``datamodule`` (keys without the prefix, then prefixed)."""
        self.check_data(datamodule)
        o = self.options
        pairs = load_word_pairs(o.word_pairs)
        test = datamodule.splits["test"]
        texts = raw_test_texts(datamodule) if datamodule.input_kind == "text" else None
        probs = predict_probs(model, test.inputs, device, o.batch_size)
        protected = (
            gender_proxies(texts, pairs) if o.protected_column == PROXY else np.asarray(test.groups[o.protected_column])
        ).astype(str)
        compared = ~np.isin(protected, o.exclude_groups)
        groups = sorted(set(protected[compared].tolist()))
        out: dict[str, Any] = {"n_test": len(test), "n_compared": int(compared.sum())}
        out.update({f"count/{g}": int(n) for g, n in zip(*np.unique(protected, return_counts=True), strict=True)})

        why_not = self._single_group_reason(groups, protected)
        if why_not:
            out["skipped_group_metrics"] = why_not
        else:
            names = np.asarray(datamodule.label_names, dtype=object)
            labels = test.labels.numpy()
            report = group_metrics(names[labels[compared]], names[probs.argmax(1)[compared]], protected[compared])
            for g, row in report.by_group.items():
                out[f"accuracy/{g}"] = row["accuracy"]
                out[f"f1_macro/{g}"] = row["f1_macro"]
            for key in ("accuracy_difference", "f1_macro_difference"):
                out[key] = getattr(report, key)
            out["demographic_parity_difference"] = report.demographic_parity_difference
            out["equalized_odds_difference"] = report.equalized_odds_difference
            out["n_undefined_rates"] = len(report.undefined_rates)

        if o.counterfactual and texts is not None:
            out.update(self._counterfactual(model, texts, probs, pairs, device))

        if o.sensitivity:
            if why_not:
                out["skipped_aps"] = why_not
            else:
                out.update(self._sensitivity(model, test.inputs, protected, compared, device))
        return {PREFIX + k: v for k, v in out.items()}

    def _sensitivity(
        self, model: nn.Module, inputs: Inputs, protected: np.ndarray, compared: np.ndarray, device: torch.device
    ) -> dict[str, Any]:
        """APS over all test inputs, with a protected-status model trained on the compared groups' inputs."""
        o = self.options
        rows = torch.from_numpy(np.flatnonzero(compared))
        n = num_rows(inputs)
        if o.sensitivity_max_samples is not None and o.sensitivity_max_samples < n:
            # the APS is a mean over inputs: a seeded uniform sample of them (the protected model still sees all
            # compared inputs)
            chosen = np.sort(np.random.default_rng(0).choice(n, size=o.sensitivity_max_samples, replace=False))
            aps_inputs = take(inputs, torch.from_numpy(chosen))
        else:
            aps_inputs = inputs
        if isinstance(inputs, Tensor) and inputs.ndim == 2 and inputs.is_floating_point():
            features = inputs.to(device)
            protected_model, accuracy = train_protected_model(features[rows.to(device)], protected[compared])
            result = accumulated_prediction_sensitivity(
                model,
                protected_model,
                aps_inputs.to(device),
                batch_size=o.batch_size,
                class_weights=o.sensitivity_weights,
            )
            space = "features"
        elif isinstance(inputs, dict) and "input_ids" in inputs and hasattr(model, "encoder_module"):
            pooled = pooled_input_embeddings(model, take(inputs, rows), batch_size=o.batch_size, device=device)
            protected_model, accuracy = train_protected_model(pooled, protected[compared])
            result = token_prediction_sensitivity(
                model,
                protected_model,
                aps_inputs,
                class_weights=o.sensitivity_weights,
                batch_size=o.sensitivity_batch_size,
                device=device,
            )
            space = "word_embeddings"
        else:
            return {
                "skipped_aps": (
                    f"APS needs [N, D] feature inputs or the token ids of a model=hf_encoder classifier; the test "
                    f"inputs are {type(inputs).__name__} for a {type(model).__name__}"
                )
            }
        return {
            "aps": result.aps,
            "aps_std": result.std,
            "aps_n": result.n,
            "aps_protected_model_acc": accuracy,
            "aps_input_space": space,
            "aps_class_weights": o.sensitivity_weights,
        }

    def _single_group_reason(self, groups: list[str], protected: np.ndarray) -> str | None:
        if len(groups) >= 2:
            return None
        seen = dict(zip(*np.unique(protected, return_counts=True), strict=True))
        source = (
            "the gender proxy of the test texts"
            if self.options.protected_column == PROXY
            else f"test column {self.options.protected_column!r}"
        )
        return (
            f"fewer than two compared groups in {source}: {groups or 'none'} (all groups with sizes: "
            f"{ {str(k): int(v) for k, v in seen.items()} }, excluded {self.options.exclude_groups})"
        )

    def _counterfactual(
        self, model: nn.Module, texts: list[str], probs: np.ndarray, pairs: Any, device: torch.device
    ) -> dict[str, Any]:
        swapped, changed = counterfactual_texts(texts, pairs)
        rows = np.flatnonzero(changed)
        if len(rows) == 0:
            return {"skipped_counterfactual": "no test text contains a word of the word-pair list"}
        featurize = getattr(model, "featurize", None)
        cf_texts = [swapped[i] for i in rows]
        cf_inputs = featurize(cf_texts) if featurize is not None else cf_texts
        cf_probs = predict_probs(model, cf_inputs, device, self.options.batch_size)
        report = counterfactual_metrics(probs[rows], cf_probs)
        return {
            "flip_rate": report.flip_rate,
            "mean_abs_prob_change": report.mean_abs_prob_change,
            "mean_total_variation": report.mean_total_variation,
            "cf_n_changed": report.n_changed,
            "cf_n_flipped": report.n_flipped,
        }


def _to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs


def predict_probs(model: nn.Module, inputs: Inputs, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Class probabilities ``softmax(model(x))`` of ``inputs`` in batches, in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            n = num_rows(inputs)
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(start + batch_size, n))
                logits = model(_to_device(take(inputs, rows), device))
                parts.append(logits.float().softmax(dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy().astype(np.float64)


def raw_test_texts(datamodule: TrustDataModule) -> list[str]:
    """The test split's texts as read (before ``map_inputs`` replaced them by model inputs)."""
    test = datamodule.splits["test"]
    if isinstance(test.inputs, list):
        return [str(t) for t in test.inputs]
    if "test" not in datamodule.raw_texts:
        raise DataError(
            f"callbacks.fairness: {type(datamodule).__name__}'s test inputs are not texts; counterfactual metrics "
            "need a text data set (or set callbacks.fairness.counterfactual=false)"
        )
    return datamodule.raw_texts["test"]
