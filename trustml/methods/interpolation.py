"""Weight interpolation between an old and a new model (BCWI, Schumann et al. 2023), soups and the diagonal Fisher.

Backward-compatible weight interpolation moves the updated weights back towards the old ones:

- plain: ``theta = alpha * theta_old + (1 - alpha) * theta_new`` for every floating-point entry of the
  state dict (``alpha = 0`` is the new model, ``alpha = 1`` the old one, both returned exactly);
- Fisher-weighted: per entry ``theta = (alpha * F * theta_old + (1 - alpha) * theta_new) / (alpha * F + 1 - alpha)``
  with ``F`` the diagonal (empirical) Fisher information of the old model, scaled to mean 1 over all entries:
  weights the old model's predictions depend on stay close to the old values, the others move to the new;
- soup: ``theta_new`` is first the mean of several new models' weights (fine-tuned from the same start).

Entries that are not floating point (integer buffers such as position ids) are taken from the new model.
Interpolation needs the same architecture (same entries of the same shapes): :func:`check_same_architecture`
refuses anything else, naming the entries that differ.

:func:`diagonal_fisher` estimates ``F_i = (1/N) sum_n (d log p(y_hat_n | x_n) / d theta_i)^2`` with ``y_hat_n``
the old model's own prediction, one sample at a time (as the reference implementation does), and
:func:`select_alpha` applies the selection rule "lowest NFR among the alphas whose accuracy is within
``tolerance`` of the new model's (alpha = 0)".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustml.errors import CheckpointError

StateDict = Mapping[str, Tensor]


def check_same_architecture(old: StateDict, new: StateDict, old_name: str = "old", new_name: str = "new") -> None:
    """Raise :class:`CheckpointError` unless ``old`` and ``new`` have the same entries with the same shapes."""
    only_old = sorted(set(old) - set(new))
    only_new = sorted(set(new) - set(old))
    shapes = [
        f"{k}: {tuple(old[k].shape)} vs {tuple(new[k].shape)}" for k in old if k in new and old[k].shape != new[k].shape
    ]
    if only_old or only_new or shapes:
        details = "; ".join(
            part
            for part in (
                f"only in the {old_name} model: {only_old[:5]}" if only_old else "",
                f"only in the {new_name} model: {only_new[:5]}" if only_new else "",
                f"different shapes: {shapes[:5]}" if shapes else "",
            )
            if part
        )
        raise CheckpointError(
            f"weight interpolation needs the {old_name} and the {new_name} model to have the same architecture, "
            f"but they differ ({details}); train both with the same model config (for different architectures use "
            "method=pc, which distils across architectures)"
        )


def _is_float(tensor: Tensor) -> bool:
    return torch.is_floating_point(tensor)


def soup(states: Sequence[StateDict]) -> dict[str, Tensor]:
    """The uniform soup ``(1/M) sum_m theta_m`` of same-architecture state dicts (non-float entries: the first's)."""
    if not states:
        raise ValueError("a soup of zero models was requested")
    for i, state in enumerate(states[1:], start=2):
        check_same_architecture(states[0], state, "first", f"number {i}")
    return {
        key: torch.stack([s[key].float() for s in states]).mean(dim=0).to(value.dtype) if _is_float(value) else value
        for key, value in states[0].items()
    }


def interpolate(
    old: StateDict, new: StateDict, alpha: float, fisher: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The state dict between ``old`` and ``new`` at ``alpha`` (plain or Fisher-weighted; see the module doc).

    ``alpha = 0`` returns (copies of) ``new`` and ``alpha = 1`` copies of ``old`` exactly; entries without a
    Fisher value are interpolated plainly.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    check_same_architecture(old, new)
    out: dict[str, Tensor] = {}
    for key, new_value in new.items():
        old_value = old[key].to(new_value.device)
        if not _is_float(new_value) or alpha == 0.0:
            out[key] = new_value.clone()
        elif alpha == 1.0:
            out[key] = old_value.clone()
        elif fisher is not None and key in fisher:
            weight = alpha * fisher[key].to(new_value.device, torch.float32)
            mixed = (weight * old_value.float() + (1.0 - alpha) * new_value.float()) / (weight + (1.0 - alpha))
            out[key] = mixed.to(new_value.dtype)
        else:
            out[key] = (alpha * old_value.float() + (1.0 - alpha) * new_value.float()).to(new_value.dtype)
    return out


def diagonal_fisher(
    model: nn.Module, inputs: Iterable[Any], scale_to_mean_one: bool = True, max_samples: int | None = None
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of ``model`` at its own predictions, per named parameter (see the module doc).

    ``inputs`` yields single-sample batches (model inputs of batch size 1). With ``scale_to_mean_one`` the
    values are divided by their mean over all parameters (the scale BCWI's alpha grid assumes), else by the
    number of samples. The model's ``requires_grad`` flags and training mode are restored afterwards.
    """
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    model.eval()
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        for x in inputs:
            if max_samples is not None and count >= max_samples:
                break
            model.zero_grad(set_to_none=True)
            log_probs = F.log_softmax(model(x), dim=-1)
            if log_probs.shape[0] != 1:
                raise ValueError(f"diagonal_fisher needs single-sample batches, got a batch of {log_probs.shape[0]}")
            log_probs[0, log_probs[0].argmax()].backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float().square()
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)
    if count == 0:
        raise ValueError("diagonal_fisher got no samples")
    if scale_to_mean_one:
        total = sum(float(v.sum()) for v in fisher.values())
        entries = sum(v.numel() for v in fisher.values())
        mean = total / entries if entries else 0.0
        divisor = mean if mean > 0 else 1.0
    else:
        divisor = float(count)
    return {name: value / divisor for name, value in fisher.items()}


@dataclass(frozen=True)
class AlphaResult:
    """Accuracy and negative flip rate (against the old model) of the model interpolated at ``alpha``."""

    alpha: float
    accuracy: float
    nfr: float

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready dict."""
        return asdict(self)


def select_alpha(results: Sequence[AlphaResult], tolerance: float) -> AlphaResult:
    """The selection rule: lowest NFR among the alphas with accuracy >= (accuracy at alpha 0) - ``tolerance``.

    Ties go to the higher accuracy, then to the smaller alpha. ``results`` must include ``alpha = 0`` (the new
    model, the reference); ``tolerance`` is an absolute accuracy difference (0.005 = half a point).
    """
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    reference = [r for r in results if r.alpha == 0.0]
    if not reference:
        raise ValueError("the alpha grid must contain 0 (the new model is the accuracy reference)")
    floor = reference[0].accuracy - tolerance
    eligible = [r for r in results if r.accuracy >= floor - 1e-12]
    return min(eligible, key=lambda r: (r.nfr, -r.accuracy, r.alpha))
