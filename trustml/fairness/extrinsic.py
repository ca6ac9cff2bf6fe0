"""Extrinsic fairness of a trained classifier on one labelled split: group, counterfactual and sensitivity metrics.

One measurement, two callers: the ``fairness`` callback (:mod:`trustml.fairness.callback`: the run's test split at
the end of training) and ``trustml-fairness run_dir=<run>`` (:mod:`trustml.cli.fairness`: a finished run's test
split rebuilt from its recorded config, or a given data file). Both call :func:`measure_extrinsic` on the model's
inputs of the split (what its ``featurize`` made of the texts), the texts as read, the labels and the options
(:class:`FairnessOptions`); the formulas live in :mod:`trustml.fairness.group_metrics`,
:mod:`trustml.fairness.counterfactual` and :mod:`trustml.fairness.sensitivity`.

- Protected attribute (:func:`protected_attribute`): a group column of the split, or ``proxy``: the gender proxy of
  the texts (:func:`~trustml.fairness.counterfactual.gender_proxies`: ``male``, ``female``, ``both``, ``none``; a
  noisy proxy, see its docstring). Groups in ``exclude_groups`` (default ``[none, both]`` for the proxy, none for a
  column) are not compared; every group's size is reported (``count/<group>``).
- Group metrics (``group``; :func:`~trustml.fairness.group_metrics.group_metrics` over the compared rows):
  ``accuracy/<group>``, ``f1_macro/<group>``, ``accuracy_difference``, ``f1_macro_difference``,
  ``demographic_parity_difference``, ``equalized_odds_difference``, ``n_undefined_rates``. Fewer than two compared
  groups: ``skipped_group_metrics`` holds the reason instead (no NaN).
- Counterfactual (``counterfactual``, text data): every text with its protected words swapped, featurized by the
  model's ``featurize``, and the class probabilities on both compared over the texts the swap changed:
  ``flip_rate``, ``mean_abs_prob_change``, ``mean_total_variation``, ``cf_n_changed``, ``cf_n_flipped``. No
  changed text: ``skipped_counterfactual``.
- Accumulated prediction sensitivity (``sensitivity``; Krishna et al. 2022, :mod:`trustml.fairness.sensitivity`):
  a protected-status model trained on the compared rows' inputs, ``APS = mean_x w^T |J(x)| v`` over all inputs
  (or a seeded uniform sample of ``sensitivity_max_samples``), on ``features`` ([N, D] float inputs) or on the
  ``word_embeddings`` of a ``model=hf_encoder`` classifier's token ids: ``aps``, ``aps_std``, ``aps_n``,
  ``aps_protected_model_acc``, ``aps_input_space``, ``aps_class_weights``; otherwise ``skipped_aps``.
- Always: ``n_test`` (rows scored), ``n_compared``, ``overall_accuracy`` (accuracy over all scored rows).

Every key is returned with the prefix ``fairness/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trustml.data.base import Inputs, Split, TrustDataModule, num_rows, take
from trustml.errors import ConfigError, DataError
from trustml.fairness.counterfactual import (
    WordPairs,
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
    """Options of one extrinsic measurement; checked when built.

    ``protected_column``: a group column of the split, or ``proxy`` (the gender proxy of the texts). ``group``:
    the group metrics. ``counterfactual``: counterfactual flips (text data only). ``sensitivity``: the APS
    (feature inputs or the token ids of ``model=hf_encoder``; skipped with the reason otherwise). ``word_pairs``:
    the word-pair YAML for the proxy and the swaps (default the shipped gender list). ``exclude_groups``: groups
    not compared (default ``[none, both]`` for the proxy, ``[]`` for a column). ``batch_size``: inference batch
    size. ``sensitivity_weights``: ``uniform`` or ``predicted`` class weights of the APS.
    ``sensitivity_max_samples``: average the APS over a seeded uniform sample of this many inputs (null: all).
    ``sensitivity_batch_size``: texts per APS batch on token inputs (each holds the encoder's activations for
    ``C + 1`` backward passes). ``option_prefix``: how the caller's options are named in messages
    (``callbacks.fairness`` for the callback, ``extrinsic`` for ``trustml-fairness``).
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
    group: bool = True
    option_prefix: str = "callbacks.fairness"

    def __post_init__(self) -> None:
        p = self.option_prefix
        if not isinstance(self.protected_column, str) or not self.protected_column:
            raise ConfigError(f"{p}.protected_column must name a group column of the test split or be proxy")
        if self.batch_size < 1:
            raise ConfigError(f"{p}.batch_size must be >= 1, got {self.batch_size}")
        if self.sensitivity_weights not in ("uniform", "predicted"):
            raise ConfigError(
                f"{p}.sensitivity_weights={self.sensitivity_weights!r}: choose uniform (w_c = 1/C over the classes) "
                "or predicted (the predicted class only)"
            )
        if self.sensitivity_max_samples is not None and self.sensitivity_max_samples < 1:
            raise ConfigError(
                f"{p}.sensitivity_max_samples must be >= 1 (or null: every test input), got "
                f"{self.sensitivity_max_samples}"
            )
        if self.sensitivity_batch_size < 1:
            raise ConfigError(f"{p}.sensitivity_batch_size must be >= 1, got {self.sensitivity_batch_size}")
        if self.exclude_groups is None:
            self.exclude_groups = ["none", "both"] if self.protected_column == PROXY else []
        self.exclude_groups = [str(g) for g in self.exclude_groups]
        if self.word_pairs is not None or self.protected_column == PROXY or self.counterfactual:
            try:
                load_word_pairs(self.word_pairs)
            except ConfigError as exc:
                raise ConfigError(f"{p}.word_pairs: {exc}") from None

    @property
    def pairs(self) -> WordPairs:
        """The word-pair list of ``word_pairs`` (cached by :func:`load_word_pairs`)."""
        return load_word_pairs(self.word_pairs)


def check_data(options: FairnessOptions, input_kind: str, group_columns: list[str], data_name: str) -> None:
    """Raise :class:`ConfigError` when ``options`` cannot work on a split of ``input_kind`` inputs (``text`` or
    ``features``) with these group columns; ``data_name`` names the data in the message."""
    o, p = options, options.option_prefix
    text = input_kind == "text"
    if o.protected_column == PROXY and not text:
        raise ConfigError(
            f"{p}.protected_column=proxy derives the attribute from texts, but {data_name} yields '{input_kind}' "
            f"inputs; name one of its test split's group columns {sorted(group_columns)}"
        )
    if o.counterfactual and not text:
        app = p == "extrinsic"  # trustml-fairness names the metrics in a list
        option = "extrinsic.metrics=[..., counterfactual]" if app else f"{p}.counterfactual=true"
        fix = "leave counterfactual out of extrinsic.metrics" if app else f"set {p}.counterfactual=false"
        raise ConfigError(f"{option} swaps words in texts, but {data_name} yields '{input_kind}' inputs; {fix}")
    if o.protected_column != PROXY and o.protected_column not in group_columns:
        raise ConfigError(
            f"{p}.protected_column={o.protected_column!r} is not a group column of {data_name}'s test split (it has "
            f"{sorted(group_columns) or 'none'}); name one of them"
            + (" or use proxy (the gender proxy of the texts)" if text else "")
        )


@dataclass
class ProtectedAttribute:
    """The protected attribute of each row, which rows are compared, and why group comparisons are impossible."""

    values: np.ndarray  # one group name (str) per row
    compared: np.ndarray  # bool per row: its group is not excluded
    groups: list[str]  # the compared groups, sorted
    counts: dict[str, int]  # every group's size, excluded ones included
    single_group_reason: str | None  # set when fewer than two groups are compared


def protected_attribute(options: FairnessOptions, split: Split, texts: list[str] | None) -> ProtectedAttribute:
    """The protected attribute of ``split``'s rows: its ``protected_column`` or the gender proxy of ``texts``."""
    if options.protected_column == PROXY:
        if texts is None:
            raise ConfigError(f"{options.option_prefix}.protected_column=proxy needs the texts of the split")
        values = gender_proxies(texts, options.pairs).astype(str)
        source = "the gender proxy of the test texts"
    else:
        values = np.asarray(split.groups[options.protected_column]).astype(str)
        source = f"test column {options.protected_column!r}"
    compared = ~np.isin(values, options.exclude_groups)
    groups = sorted(set(values[compared].tolist()))
    counts = {str(g): int(n) for g, n in zip(*np.unique(values, return_counts=True), strict=True)}
    reason = None
    if len(groups) < 2:
        reason = (
            f"fewer than two compared groups in {source}: {groups or 'none'} (all groups with sizes: {counts}, "
            f"excluded {options.exclude_groups})"
        )
    return ProtectedAttribute(values, compared, groups, counts, reason)


def measure_extrinsic(
    model: nn.Module,
    split: Split,
    texts: list[str] | None,
    label_names: list[str],
    options: FairnessOptions,
    device: torch.device | str,
) -> dict[str, Any]:
    """Every enabled measurement of ``model`` on ``split`` (its inputs as the model reads them, ``texts`` the same
    rows as read, or None for feature data); the keys listed in the module docstring, prefixed ``fairness/``."""
    o = options
    device = torch.device(device)
    attribute = protected_attribute(o, split, texts)
    protected, compared = attribute.values, attribute.compared
    probs = predict_probs(model, split.inputs, device, o.batch_size)
    labels = split.labels.numpy()
    predicted = probs.argmax(1)
    out: dict[str, Any] = {
        "n_test": len(split),
        "n_compared": int(compared.sum()),
        "overall_accuracy": float((predicted == labels).mean()),
    }
    out.update({f"count/{g}": n for g, n in attribute.counts.items()})
    why_not = attribute.single_group_reason
    if o.group:
        if why_not:
            out["skipped_group_metrics"] = why_not
        else:
            names = np.asarray(label_names, dtype=object)
            report = group_metrics(names[labels[compared]], names[predicted[compared]], protected[compared])
            for g, row in report.by_group.items():
                out[f"accuracy/{g}"] = row["accuracy"]
                out[f"f1_macro/{g}"] = row["f1_macro"]
            for key in ("accuracy_difference", "f1_macro_difference"):
                out[key] = getattr(report, key)
            out["demographic_parity_difference"] = report.demographic_parity_difference
            out["equalized_odds_difference"] = report.equalized_odds_difference
            out["n_undefined_rates"] = len(report.undefined_rates)
    if o.counterfactual and texts is not None:
        out.update(_counterfactual(model, texts, probs, o, device))
    if o.sensitivity:
        if why_not:
            out["skipped_aps"] = why_not
        else:
            out.update(_sensitivity(model, split.inputs, protected, compared, o, device))
    return {PREFIX + k: v for k, v in out.items()}


def _sensitivity(
    model: nn.Module,
    inputs: Inputs,
    protected: np.ndarray,
    compared: np.ndarray,
    o: FairnessOptions,
    device: torch.device,
) -> dict[str, Any]:
    """APS over all inputs (or a seeded sample), with a protected-status model trained on the compared rows."""
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
            model, protected_model, aps_inputs.to(device), batch_size=o.batch_size, class_weights=o.sensitivity_weights
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
                f"APS needs [N, D] feature inputs or the token ids of a model=hf_encoder classifier; the test inputs "
                f"are {type(inputs).__name__} for a {type(model).__name__}"
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


def _counterfactual(
    model: nn.Module, texts: list[str], probs: np.ndarray, o: FairnessOptions, device: torch.device
) -> dict[str, Any]:
    swapped, changed = counterfactual_texts(texts, o.pairs)
    rows = np.flatnonzero(changed)
    if len(rows) == 0:
        return {"skipped_counterfactual": "no test text contains a word of the word-pair list"}
    featurize = getattr(model, "featurize", None)
    cf_texts = [swapped[i] for i in rows]
    cf_inputs = featurize(cf_texts) if featurize is not None else cf_texts
    cf_probs = predict_probs(model, cf_inputs, device, o.batch_size)
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


def raw_test_texts(datamodule: TrustDataModule, option_prefix: str = "callbacks.fairness") -> list[str]:
    """The test split's texts as read (before ``map_inputs`` replaced them by model inputs)."""
    test = datamodule.splits["test"]
    if isinstance(test.inputs, list):
        return [str(t) for t in test.inputs]
    if "test" not in datamodule.raw_texts:
        raise DataError(
            f"{option_prefix}: {type(datamodule).__name__}'s test inputs are not texts; counterfactual metrics need "
            f"a text data set (or set {option_prefix}.counterfactual=false)"
        )
    return datamodule.raw_texts["test"]
