"""A trained model's logits and per-example losses on a set of samples, computed batch by batch without gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustml.data.base import Inputs, Split, num_rows, take


def model_inputs(model: nn.Module, inputs: Inputs) -> Inputs:
    """Inputs as the model consumes them: texts go through the model's ``featurize`` (tokens or embeddings)."""
    if isinstance(inputs, list):
        featurize = getattr(model, "featurize", None)
        if featurize is None:
            raise TypeError(f"{type(model).__name__} has no featurize() and cannot read text inputs")
        return featurize(inputs)
    return inputs


def logits_on(model: nn.Module, inputs: Inputs, batch_size: int = 512) -> Tensor:
    """``model(inputs)`` in eval mode, ``batch_size`` rows at a time: ``[N, num_classes]`` on the CPU."""
    model.eval()
    features = model_inputs(model, inputs)
    n = num_rows(features)
    with torch.no_grad():
        chunks = [model(take(features, torch.arange(i, min(i + batch_size, n)))).cpu() for i in range(0, n, batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def logits_on_splits(model: nn.Module, splits: Sequence[Split], batch_size: int = 512) -> Tensor:
    """Logits on the concatenation of ``splits`` (in order)."""
    return torch.cat([logits_on(model, split.inputs, batch_size) for split in splits])


def per_example_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy ``-log softmax(z)_y`` of every example: the LOSS attack's signal."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def accuracy_on_split(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (eval mode, no gradients): what ``test/acc`` of a run measures."""
    if len(split) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    predictions = logits_on(model, split.inputs, batch_size).argmax(dim=1)
    return float((predictions == split.labels.cpu()).float().mean())
