"""Backward-compatible training (BCT, Shen et al., CVPR 2020): the influence loss and its classifier.

The influence loss sends the new model's embeddings through the *old* model's frozen classifier,
``L_influence_i = CE(W_old phi_new(x_i) + b_old, y_i)``, so the new embedding space stays usable with the
old gallery. Classes the old classifier lacks get a synthesized ("pseudo") classifier: the row of class
``c`` is the mean old-model embedding of the training samples of class ``c`` (bias 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_mean_embeddings(embeddings: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """``[len(classes), D]``: the mean of ``embeddings`` over the samples of each class in ``classes``."""
    if classes.numel() == 0:
        return embeddings.new_zeros(0, embeddings.shape[-1])
    one_hot = (labels.unsqueeze(0) == classes.unsqueeze(1)).to(embeddings.dtype)  # [K, N]
    counts = one_hot.sum(dim=1)
    if bool((counts == 0).any()):
        missing = classes[counts == 0].tolist()
        raise ValueError(f"no samples of class(es) {missing} to synthesize their classifier from")
    return (one_hot @ embeddings) / counts.unsqueeze(1)


def extend_classifier(
    old_weight: Tensor, old_bias: Tensor | None, old_embeddings: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    """The old head ``(W, b)`` widened to ``num_classes`` rows with class-mean pseudo-classifiers.

    Rows ``0 .. C_old-1`` are the old head's; each class ``c >= C_old`` gets the mean old embedding of its
    samples in ``old_embeddings``/``labels`` and bias 0. Returns detached tensors (the head stays frozen).
    """
    old_classes, dim = old_weight.shape
    if old_embeddings.shape[-1] != dim:
        raise ValueError(f"old embeddings have width {old_embeddings.shape[-1]}, the old head expects {dim}")
    if old_classes > num_classes:
        raise ValueError(f"the old head has {old_classes} classes, more than the new task's {num_classes}")
    bias = old_bias if old_bias is not None else old_weight.new_zeros(old_classes)
    new_classes = torch.arange(old_classes, num_classes, device=labels.device)
    pseudo = class_mean_embeddings(old_embeddings.to(old_weight.dtype), labels, new_classes)
    weight = torch.cat([old_weight.detach(), pseudo.to(old_weight.device)], dim=0)
    bias = torch.cat([bias.detach(), bias.new_zeros(len(new_classes))], dim=0)
    return weight, bias


def influence_loss(new_embeddings: Tensor, target: Tensor, old_weight: Tensor, old_bias: Tensor) -> Tensor:
    """``CE(W_old phi_new + b_old, y)`` per sample, shape ``[B]``; the old head gets no gradient."""
    if new_embeddings.shape[-1] != old_weight.shape[1]:
        raise ValueError(
            f"new embeddings have width {new_embeddings.shape[-1]} but the old classifier expects "
            f"{old_weight.shape[1]}; BCT needs the new model's embedding size to equal the old one's"
        )
    logits = F.linear(new_embeddings, old_weight.detach(), old_bias.detach())
    return F.cross_entropy(logits, target, reduction="none")
