"""Metrics of model updates: regression (negative flip) metrics and backward compatibility of embeddings."""

from trustml.metrics.compatibility import (
    CompatibilityReport,
    CrossMatrix,
    compatibility_report,
    linear_classifier_accuracy,
    mean_average_precision,
    nearest_neighbor_accuracy,
    retrieval_cross_matrix,
)
from trustml.metrics.flip_metric import ClassFlips, FlipMetrics, FlipReport, flip_report
from trustml.metrics.flips import (
    FlipCounts,
    error_rate,
    flip_counts,
    negative_flip_impact,
    negative_flip_rate,
    positive_flip_rate,
    relative_negative_flip_rate,
)

__all__ = [
    "ClassFlips",
    "CompatibilityReport",
    "CrossMatrix",
    "FlipCounts",
    "FlipMetrics",
    "FlipReport",
    "compatibility_report",
    "error_rate",
    "flip_counts",
    "flip_report",
    "linear_classifier_accuracy",
    "mean_average_precision",
    "negative_flip_impact",
    "negative_flip_rate",
    "nearest_neighbor_accuracy",
    "positive_flip_rate",
    "relative_negative_flip_rate",
    "retrieval_cross_matrix",
]
