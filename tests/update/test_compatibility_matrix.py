"""The query-model x gallery-model retrieval cross matrix (top-1, mAP) and the compute of each model."""

from __future__ import annotations

import pytest
import torch

from trustml.metrics import mean_average_precision, nearest_neighbor_accuracy, retrieval_cross_matrix
from trustml.metrics.compatibility import count_parameters, encode_seconds_per_query


def test_diagonal_is_each_models_own_retrieval_accuracy() -> None:
    torch.manual_seed(0)
    labels_q, labels_g = torch.arange(60) % 4, torch.arange(80) % 4
    centers = torch.randn(4, 6) * 2
    embed = {
        "small": lambda y: centers[y] + torch.randn(len(y), 6),
        "large": lambda y: centers[y] + 0.3 * torch.randn(len(y), 6),
    }
    queries = {name: f(labels_q) for name, f in embed.items()}
    galleries = {name: f(labels_g) for name, f in embed.items()}
    queries["narrow"], galleries["narrow"] = torch.randn(60, 3), torch.randn(80, 3)
    matrix = retrieval_cross_matrix(queries, galleries, labels_q, labels_g, parameters={"small": 10, "large": 40})
    for name in queries:
        own = nearest_neighbor_accuracy(queries[name], labels_q, galleries[name], labels_g)
        assert matrix.top1[name][name] == own
        assert matrix.map[name][name] == mean_average_precision(queries[name], labels_q, galleries[name], labels_g)
    assert matrix.top1["small"]["narrow"] is None and matrix.map["narrow"]["large"] is None
    assert matrix.top1["small"]["large"] == nearest_neighbor_accuracy(
        queries["small"], labels_q, galleries["large"], labels_g
    )
    assert matrix.top1["large"]["large"] > matrix.top1["small"]["small"]
    assert matrix.compatible("small", "large") == (matrix.top1["small"]["large"] > matrix.top1["small"]["small"])
    assert matrix.compute_ratio("small", "large")["parameters"] == 4.0
    table = matrix.to_markdown()
    assert "| small |" in table and "—" in table


def test_mean_average_precision_by_hand() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    gallery_labels = torch.tensor([0, 1, 1, 0])
    query, query_labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    # ranking by cosine: g0 (rel), g1, g3 (rel), g2 -> AP = (1/1 + 2/3) / 2
    assert mean_average_precision(query, query_labels, gallery, gallery_labels) == pytest.approx((1 + 2 / 3) / 2)
    # a query whose label has no gallery item does not count
    both = mean_average_precision(torch.cat([query, query]), torch.tensor([0, 5]), gallery, gallery_labels)
    assert both == pytest.approx((1 + 2 / 3) / 2)


def test_parameters_and_encode_time() -> None:
    small, large = torch.nn.Linear(8, 4), torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(30)])
    assert count_parameters(small) == 36
    batches = [torch.randn(64, 8) for _ in range(4)]
    t_small = encode_seconds_per_query(small, batches)
    t_large = encode_seconds_per_query(large, batches)
    assert 0 < t_small < t_large
