"""Training objectives as pure functions of tensors (per-sample losses)."""

from trustml.losses.backward_compatible import class_mean_embeddings, extend_classifier, influence_loss
from trustml.losses.distances import kl_distance, logit_difference_inhibition, logit_matching_distance
from trustml.losses.positive_congruent import (
    DISTANCES,
    focal_distillation_loss,
    focal_weights,
    logit_distance,
    naive_congruent_loss,
)

__all__ = [
    "DISTANCES",
    "class_mean_embeddings",
    "extend_classifier",
    "focal_distillation_loss",
    "focal_weights",
    "influence_loss",
    "kl_distance",
    "logit_difference_inhibition",
    "logit_distance",
    "logit_matching_distance",
    "naive_congruent_loss",
]
