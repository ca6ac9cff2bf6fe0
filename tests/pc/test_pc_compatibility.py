"""Cross-model 1-NN retrieval accuracy and the compatibility verdict on hand-made embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from trustml.metrics import compatibility_report, linear_classifier_accuracy, nearest_neighbor_accuracy

GALLERY_LABELS = torch.tensor([0, 1])
QUERY_LABELS = torch.tensor([0, 1])
OLD_GALLERY = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
OLD_QUERY = torch.tensor([[0.9, 0.1], [0.8, 0.2]])  # second query lands near class 0: old/old = 0.5
NEW_QUERY = torch.tensor([[1.0, 0.05], [0.1, 1.0]])  # both near their class in the old space: new/old = 1.0
NEW_GALLERY = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # new model alone swaps the axes: new/new = 0.0


def test_nearest_neighbor_accuracy_by_hand() -> None:
    assert nearest_neighbor_accuracy(OLD_QUERY, QUERY_LABELS, OLD_GALLERY, GALLERY_LABELS) == 0.5
    assert nearest_neighbor_accuracy(NEW_QUERY, QUERY_LABELS, OLD_GALLERY, GALLERY_LABELS, "euclidean") == 1.0


def test_report_and_verdict(tmp_path) -> None:
    report = compatibility_report(
        OLD_QUERY, NEW_QUERY, QUERY_LABELS, OLD_GALLERY, NEW_GALLERY, GALLERY_LABELS, metric="cosine"
    )
    assert (report.new_old, report.old_old, report.new_new) == (1.0, 0.5, 0.0)
    assert report.compatible
    saved = json.loads(report.save(tmp_path / "compat.json").read_text())
    assert saved["compatible"] is True and saved["metric"] == "cosine"
    swapped = compatibility_report(
        NEW_QUERY, OLD_QUERY, QUERY_LABELS, OLD_GALLERY, NEW_GALLERY, GALLERY_LABELS, metric="cosine"
    )
    assert not swapped.compatible  # new/old 0.5 does not beat old/old 1.0


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="embedding size"):
        nearest_neighbor_accuracy(torch.ones(2, 3), QUERY_LABELS, OLD_GALLERY, GALLERY_LABELS)
    with pytest.raises(ValueError, match="metric must be one of"):
        nearest_neighbor_accuracy(OLD_QUERY, QUERY_LABELS, OLD_GALLERY, GALLERY_LABELS, metric="manhattan")
    with pytest.raises(ValueError, match="one label"):
        nearest_neighbor_accuracy(OLD_QUERY, QUERY_LABELS[:1], OLD_GALLERY, GALLERY_LABELS)


def test_old_head_accuracy_on_both_query_embeddings() -> None:
    head = (torch.eye(2), torch.zeros(2))  # predicts the larger coordinate
    assert linear_classifier_accuracy(OLD_QUERY, QUERY_LABELS, *head) == 0.5
    report = compatibility_report(
        OLD_QUERY, NEW_QUERY, QUERY_LABELS, OLD_GALLERY, NEW_GALLERY, GALLERY_LABELS, old_head=head
    )
    assert (report.old_head_new, report.old_head_old) == (1.0, 0.5)
    assert report.to_dict()["old_head_new"] == 1.0
    with pytest.raises(ValueError, match="head expecting 2"):
        linear_classifier_accuracy(torch.ones(2, 3), QUERY_LABELS, *head)
