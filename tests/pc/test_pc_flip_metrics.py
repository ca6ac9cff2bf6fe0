"""Flip metrics on a hand-computed 10-sample example (see the table in ``EXAMPLE``)."""

from __future__ import annotations

import json

import pytest
import torch

from trustml.metrics import (
    FlipMetrics,
    error_rate,
    flip_counts,
    flip_report,
    negative_flip_impact,
    negative_flip_rate,
    positive_flip_rate,
    relative_negative_flip_rate,
)

# sample:      0  1  2  3  4  5  6  7  8  9
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
OLD = torch.tensor([0, 1, 2, 0, 1, 0, 1, 1, 1, 1])  # wrong on 5, 6, 8, 9       -> ER_old 0.4
NEW = torch.tensor([0, 1, 0, 1, 1, 2, 0, 1, 0, 0])  # wrong on 2, 3, 8          -> ER_new 0.3
# negative flips (old right, new wrong): 2, 3 -> NFR 0.2; positive flips: 5, 6, 9 -> PFR 0.3


def test_pure_functions_match_hand_computation() -> None:
    assert error_rate(OLD, Y) == pytest.approx(0.4)
    assert error_rate(NEW, Y) == pytest.approx(0.3)
    assert negative_flip_rate(OLD, NEW, Y) == pytest.approx(0.2)
    assert relative_negative_flip_rate(OLD, NEW, Y) == pytest.approx(0.2 / (0.6 * 0.3))
    assert negative_flip_impact(OLD, NEW, Y) == pytest.approx(0.2 / 0.3)
    assert positive_flip_rate(OLD, NEW, Y) == pytest.approx(0.3)


def test_logits_are_reduced_to_their_argmax() -> None:
    old_logits = torch.nn.functional.one_hot(OLD, 3).float() * 2.0 - 0.5
    new_logits = torch.nn.functional.one_hot(NEW, 3).float()
    assert flip_counts(old_logits, new_logits, Y) == flip_counts(OLD, NEW, Y)


def test_zero_denominators_give_zero_not_nan() -> None:
    y = torch.tensor([0, 1])
    assert relative_negative_flip_rate(y, y, y) == 0.0  # new model never wrong
    assert negative_flip_impact(1 - y, y, y) == 0.0
    assert relative_negative_flip_rate(1 - y, 1 - y, y) == 0.0  # old model never right


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        negative_flip_rate(OLD, NEW[:5], Y)
    with pytest.raises(ValueError, match="differ in shape"):
        error_rate(OLD[:3], Y)


def test_metric_accumulates_batches_like_one_call() -> None:
    metric = FlipMetrics(num_classes=3)
    metric.update(OLD[:4], NEW[:4], Y[:4])
    metric.update(OLD[4:], NEW[4:], Y[4:])
    rates = metric.compute()
    assert rates["nfr"].item() == pytest.approx(0.2)
    assert rates["er_old"].item() == pytest.approx(0.4)
    assert rates["relative_nfr"].item() == pytest.approx(0.2 / 0.18)
    report = metric.report()
    assert report.negative_flip_ids == [2, 3]  # running positions when no ids are given
    assert report.positive_flip_ids == [5, 6, 9]
    metric.reset()
    assert metric.counts().total == 0


def test_report_per_class_and_ids(tmp_path) -> None:
    report = flip_report(OLD, NEW, Y, num_classes=3, index=Y.new_tensor(range(100, 110)), class_names=["a", "b", "c"])
    assert report.negative_flip_ids == [102, 103]
    assert report.positive_flip_ids == [105, 106, 109]
    rows = {c.name: c for c in report.per_class}
    assert (rows["a"].support, rows["a"].old_errors, rows["a"].new_errors) == (4, 2, 1)
    assert (rows["a"].negative_flips, rows["a"].positive_flips) == (1, 2)
    assert (rows["b"].negative_flips, rows["b"].positive_flips, rows["b"].support) == (0, 0, 3)
    assert (rows["c"].old_errors, rows["c"].new_errors, rows["c"].negative_flips, rows["c"].positive_flips) == (
        2,
        2,
        1,
        1,
    )
    saved = json.loads(report.save(tmp_path / "sub" / "flips.json").read_text())
    assert saved["negative_flip_ids"] == [102, 103]
    assert saved["rates"]["nfr"] == pytest.approx(0.2)
    assert saved["counts"]["positive_flips"] == 3
    assert saved["per_class"][2]["name"] == "c"


def test_metric_rejects_bad_input() -> None:
    metric = FlipMetrics(num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        metric.update(OLD, NEW, Y + 1)
    with pytest.raises(ValueError, match="index"):
        metric.update(OLD, NEW, Y, index=torch.arange(3))
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        metric.report(["a", "b"])
    with pytest.raises(ValueError, match="num_classes must be positive"):
        FlipMetrics(num_classes=0)


def test_per_class_counts_of_stacked_masks() -> None:
    from trustml.metrics.flips import per_class_counts

    labels = torch.tensor([0, 2, 2, 1])
    masks = torch.tensor([[True, True, False, True], [False, True, True, False]])
    assert per_class_counts(labels, masks, 3).tolist() == [[1, 1, 1], [0, 0, 2]]
    assert per_class_counts(labels, masks[1], 3).tolist() == [0, 0, 2]
