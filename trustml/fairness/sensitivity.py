"""Accumulated prediction sensitivity (Krishna et al. 2022, "Measuring Fairness of Text Classifiers via
Prediction Sensitivity", ACL).

How much a prediction depends on the input features that encode membership in a protected group. For an input
``x`` with features ``x_j`` (the entries of its token embeddings ``[T, D]`` over non-padding tokens, or of a
feature vector ``[D]``), a task classifier with class probabilities ``f(x) in R^C`` and a protected-status
model with group probabilities ``g(x) in R^K``:

    J_cj = d f_c(x) / d x_j                                        (Jacobian of the task model, C x n)
    u_j  = sum_k |d g_k(x) / d x_j|,   v_j = u_j / sum_j' u_j'      (protected-feature weights, sum_j v_j = 1)
    PS(x) = w^T |J| v = sum_c w_c sum_j |J_cj| v_j                  (prediction sensitivity of x)
    APS   = (1/N) sum_x PS(x)                                        (accumulated over the data)

``|.|`` is elementwise. ``w`` weights the outputs: ``"uniform"`` (``w_c = 1/C``, the default), ``"predicted"``
(one-hot at ``argmax_c f_c(x)``) or a given vector. With two protected groups ``|dg_0/dx| = |dg_1/dx|`` (the
probabilities sum to 1), so ``v`` is the normalised gradient magnitude of the protected-status classifier,
as in the paper; with ``K > 2`` groups their magnitudes are summed. A feature the protected-status model does
not use gets no weight, so ``PS`` is large when the prediction moves with exactly the features that
reveal group membership.

What was checked against the paper (2026-12-02, through the stored public pages available offline: the arXiv
2203.08670 abstract page, its ACL 2022 bibliography entry and a research summary by the first author): only the
abstract's description, that the metric "measures fairness ... based on the model's prediction sensitivity to
perturbations in input features", quantifies "the extent to which a single prediction depends on a protected
attribute, where the protected attribute encodes the membership status of an individual in a protected group",
and is accumulated over the data. The full text (its equations) was NOT reachable, so these details follow the
recollection of the paper's ``w^T |J| v`` form and are unverified: that ``v`` is the normalised absolute gradient of
a protected-status classifier (summed over groups for ``K > 2`` here), that ``|.|`` is elementwise, that the task
outputs are probabilities rather than logits (``task_outputs`` offers both), the default ``w`` (uniform here; the
paper may weight a favourable class), and the plain mean over inputs. Input features for text here are the
looked-up word embeddings of the tokens (:func:`token_prediction_sensitivity`) or a feature vector.

Token-id inputs of a ``model=hf_encoder`` classifier (:class:`EmbeddingInputClassifier`,
:func:`token_prediction_sensitivity`): ``x`` is ``E = word_embeddings(input_ids)`` ``[T, D]``, fed to the encoder
as ``inputs_embeds``; the protected-status model (:class:`ProtectedStatusModel`) is a logistic regression on the
mean-pooled word embeddings, so ``|d g / d E[t, d]|`` is the same for every token ``t`` of a text: ``v`` weights the
embedding *dimensions* that separate the groups (spread evenly over the tokens), not the gendered tokens alone.

Batched: the gradients of ``sum_b f_c(x_b)`` with respect to the whole batch are the per-sample gradients,
because in eval mode (no dropout, no batch statistics) sample ``b``'s output depends only on ``x_b``; so a
batch costs ``C + K`` backward passes, whatever its size, and no per-sample loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from trustml.errors import ConfigError, DataError
from trustml.models.hf_encoder import mean_pool

Model = Callable[..., Tensor]


def _call(model: Model, x: Tensor, mask: Tensor | None) -> Tensor:
    return model(x) if mask is None else model(x, mask)


@contextmanager
def _eval_mode(*models: Model):
    modules = [m for m in models if isinstance(m, nn.Module)]
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, state in zip(modules, states, strict=True):
            m.train(state)


def _abs_jacobian_rows(out: Tensor, x: Tensor) -> list[Tensor]:
    """``|d out[:, c] / d x|`` per output ``c``: each one backward of the batch sum (per-sample gradients)."""
    grads = []
    for c in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)
        grads.append(grad.abs())
    return grads


def _protected_weights(prot: Tensor, x: Tensor) -> Tensor:
    """``u = sum_k |d g_k / d x|`` per sample; with two groups ``|dg_0/dx| = |dg_1/dx|``, so one backward and
    ``u = 2 |dg_0/dx|`` (the factor cancels in ``v = u / sum u``)."""
    if prot.shape[1] == 2:
        (grad,) = torch.autograd.grad(prot[:, 0].sum(), x, retain_graph=True)
        return 2 * grad.abs()
    return torch.stack(_abs_jacobian_rows(prot, x)).sum(dim=0)


@dataclass
class SensitivityResult:
    """Per-sample prediction sensitivities and their mean, the APS."""

    per_sample: Tensor  # [N]
    aps: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (without the per-sample values)."""
        return {"aps": self.aps, "std": self.std, "n": self.n}


def prediction_sensitivity(
    task_model: Model,
    protected_model: Model,
    inputs: Tensor,
    attention_mask: Tensor | None = None,
    *,
    class_weights: Literal["uniform", "predicted"] | Tensor = "uniform",
    task_outputs: Literal["probs", "logits"] = "probs",
) -> Tensor:
    """``PS(x) = w^T |J(x)| v(x)`` of each input of one batch (module docstring); returns ``[B]``.

    ``inputs``: ``[B, T, D]`` embeddings (with ``attention_mask [B, T]``, 1 = token) or ``[B, D]`` features.
    Both models are called as ``model(inputs)`` or ``model(inputs, attention_mask)`` and return logits;
    the task model's are turned into probabilities unless ``task_outputs="logits"``.
    """
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        task = _call(task_model, x, attention_mask)
        if task.ndim != 2 or task.shape[0] != x.shape[0]:
            raise DataError(f"the task model must return [batch, classes] logits, got shape {tuple(task.shape)}")
        task = task.softmax(dim=-1) if task_outputs == "probs" else task
        prot = _call(protected_model, x, attention_mask)
        if prot.ndim != 2 or prot.shape[0] != x.shape[0]:
            raise DataError(f"the protected model must return [batch, groups] logits, got {tuple(prot.shape)}")
        prot = prot.softmax(dim=-1)
        u = _protected_weights(prot, x)  # [B, *feature_shape]
        predicted_only = isinstance(class_weights, str) and class_weights == "predicted"
        if predicted_only:  # w one-hot at argmax: one backward of sum_b f_{c*_b}(x_b) gives every |J_{c*_b}|
            chosen = task.gather(1, task.detach().argmax(dim=1, keepdim=True)).sum()
            task_grads = [torch.autograd.grad(chosen, x, retain_graph=True)[0].abs()]
        else:
            task_grads = _abs_jacobian_rows(task, x)  # C x [B, *feature_shape]
    batch = x.shape[0]
    if attention_mask is not None and x.ndim == 3:
        keep = attention_mask.to(u.dtype).unsqueeze(-1)
        u = u * keep
        task_grads = [g * keep for g in task_grads]
    u = u.reshape(batch, -1)
    v = u / u.sum(dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    per_class = torch.stack([(g.reshape(batch, -1) * v).sum(dim=1) for g in task_grads], dim=1)  # [B, C] or [B, 1]
    if predicted_only:
        return per_class[:, 0].detach()
    num_classes = per_class.shape[1]
    if isinstance(class_weights, Tensor):
        if class_weights.shape != (num_classes,):
            raise ConfigError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
        w = class_weights.to(per_class).expand(batch, -1)
    elif class_weights == "uniform":
        w = torch.full_like(per_class, 1.0 / num_classes)
    elif class_weights == "predicted":
        w = nn.functional.one_hot(task.detach().argmax(dim=1), num_classes).to(per_class)
    else:
        raise ConfigError(f"class_weights must be 'uniform', 'predicted' or a tensor, got {class_weights!r}")
    return (w * per_class).sum(dim=1).detach()


def accumulated_prediction_sensitivity(
    task_model: Model,
    protected_model: Model,
    inputs: Tensor,
    attention_mask: Tensor | None = None,
    *,
    class_weights: Literal["uniform", "predicted"] | Tensor = "uniform",
    task_outputs: Literal["probs", "logits"] = "probs",
    batch_size: int = 64,
) -> SensitivityResult:
    """``APS = (1/N) sum_x w^T |J(x)| v(x)`` over ``inputs`` in batches of ``batch_size`` (module docstring).

    Models are put in eval mode for the computation (restored afterwards); see :func:`prediction_sensitivity`
    for the arguments.
    """
    if inputs.ndim not in (2, 3) or len(inputs) == 0:
        raise DataError(f"inputs must be non-empty [N, D] features or [N, T, D] embeddings, got {tuple(inputs.shape)}")
    if attention_mask is not None and attention_mask.shape != inputs.shape[:2]:
        raise DataError(f"attention_mask must have shape {tuple(inputs.shape[:2])}, got {tuple(attention_mask.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    with _eval_mode(task_model, protected_model):
        for start in range(0, len(inputs), batch_size):
            mask = None if attention_mask is None else attention_mask[start : start + batch_size]
            parts.append(
                prediction_sensitivity(
                    task_model,
                    protected_model,
                    inputs[start : start + batch_size],
                    mask,
                    class_weights=class_weights,
                    task_outputs=task_outputs,
                )
            )
    per_sample = torch.cat(parts).cpu()
    return SensitivityResult(
        per_sample=per_sample,
        aps=float(per_sample.mean()),
        std=float(per_sample.std()) if len(per_sample) > 1 else 0.0,
        n=len(per_sample),
    )


class ProtectedStatusModel(nn.Module):
    """Logistic regression on (mean-pooled) inputs: ``g(x) = softmax(W pool(x) + b)`` over protected groups.

    Accepts the same inputs as the task model, ``[B, D]`` or ``[B, T, D]`` with an attention mask, so its
    gradient with respect to every token embedding is defined. ``groups`` names the output columns.
    """

    def __init__(self, dim: int, groups: Sequence[Any]) -> None:
        super().__init__()
        self.groups = list(groups)
        self.linear = nn.Linear(dim, len(self.groups))

    def pool(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if x.ndim == 2:
            return x
        mask = attention_mask if attention_mask is not None else torch.ones(x.shape[:2], device=x.device)
        return mean_pool(x, mask)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.linear(self.pool(x, attention_mask))


def train_protected_model(
    inputs: Tensor,
    labels: Sequence[Any] | np.ndarray,
    attention_mask: Tensor | None = None,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> tuple[ProtectedStatusModel, float]:
    """Fit :class:`ProtectedStatusModel` on the same inputs as the task model; returns it and its train accuracy.

    Minimises ``mean_i CE(g(x_i), a_i) + l2 * ||W||^2`` with full-batch L-BFGS on the pooled inputs (pooled once).
    ``labels``: one protected-group label per input (any values; drop e.g. the proxy's "none" beforehand if it
    should not be a group). Raises ``DataError`` for fewer than two groups or a length mismatch.
    """
    labels_arr = np.asarray(labels, dtype=object)
    if labels_arr.ndim != 1 or len(labels_arr) != len(inputs):
        raise DataError(f"need one protected label per input: {len(inputs)} inputs, labels of shape {labels_arr.shape}")
    groups, targets = np.unique(labels_arr.astype(str), return_inverse=True)
    if len(groups) < 2:
        raise DataError(
            f"the protected labels hold a single group ({groups[0] if len(groups) else 'none'!r}); a protected-"
            "status model needs at least two groups"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model = ProtectedStatusModel(inputs.shape[-1], groups.tolist()).to(inputs.device, inputs.dtype)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.01)
        pooled = model.pool(inputs.detach(), attention_mask)
    y = torch.as_tensor(targets, device=inputs.device)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model.linear(pooled), y) + l2 * model.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    model.eval()
    with torch.no_grad():
        accuracy = float((model.linear(pooled).argmax(dim=1) == y).float().mean())
    return model, accuracy


# --- token-id inputs of a Hugging Face encoder classifier (model=hf_encoder) -----------------------------------


class EmbeddingInputClassifier(nn.Module):
    """A ``model=hf_encoder`` classifier as a function of its input word embeddings: ``f(E, mask)``.

    ``model`` needs ``encoder_module`` (a Hugging Face encoder taking ``inputs_embeds``), ``body`` and ``head``
    (as :class:`trustml.models.hf_encoder.HFEncoderClassifier` has). ``forward(E, mask) =
    head(body(mean_pool(encoder(inputs_embeds=E, attention_mask=mask), mask)))``, which equals
    ``model({"input_ids": ids, "attention_mask": mask})`` when ``E = word_embeddings(ids)``: the encoder adds
    the position and token-type embeddings (and its LayerNorm) to ``E`` itself. So ``d f / d E`` is the gradient
    with respect to the looked-up embedding of every token.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in ("encoder_module", "body", "head"):
            if not hasattr(model, name):
                raise ConfigError(
                    f"prediction sensitivity on token ids needs a model=hf_encoder classifier (encoder_module, body, "
                    f"head); {type(model).__name__} has no {name}"
                )
        self.model = model

    @property
    def embeddings(self) -> nn.Module:
        """The encoder's word-embedding table (``get_input_embeddings()``)."""
        get = getattr(self.model.encoder_module, "get_input_embeddings", None)
        if get is None:
            raise ConfigError(
                f"prediction sensitivity on token ids needs a Hugging Face encoder (get_input_embeddings); "
                f"{type(self.model.encoder_module).__name__} has none"
            )
        return get()

    def forward(self, embeds: Tensor, attention_mask: Tensor) -> Tensor:
        encoder = self.model.encoder_module
        hidden = encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return self.model.head(self.model.body(mean_pool(hidden, attention_mask)))


def _token_batches(
    inputs: dict[str, Tensor], batch_size: int, device: torch.device | None
) -> list[tuple[int, Tensor, Tensor]]:
    """``(first row, input_ids, attention_mask)`` batches in order, each trimmed to its longest text."""
    if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
        raise DataError("token inputs must be a dict with input_ids and attention_mask ([N, T] tensors)")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if ids.ndim != 2 or ids.shape != mask.shape or len(ids) == 0:
        raise DataError(
            f"input_ids and attention_mask must be non-empty [N, T] tensors of one shape, got "
            f"{tuple(ids.shape)} and {tuple(mask.shape)}"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    batches = []
    for start in range(0, len(ids), batch_size):
        m = mask[start : start + batch_size]
        length = max(int(m.sum(dim=1).max()), 1)
        b_ids, b_mask = ids[start : start + batch_size, :length], m[:, :length]
        if device is not None:
            b_ids, b_mask = b_ids.to(device), b_mask.to(device)
        batches.append((start, b_ids, b_mask))
    return batches


def pooled_input_embeddings(
    model: nn.Module, inputs: dict[str, Tensor], *, batch_size: int = 256, device: torch.device | None = None
) -> Tensor:
    """``mean_pool(word_embeddings(input_ids), attention_mask)`` of every text, ``[N, D]`` (no gradient).

    The features :class:`ProtectedStatusModel` sees of a token-id input (it pools the same way when it is given
    the ``[B, T, D]`` embeddings and the mask), so it can be trained on these with :func:`train_protected_model`.
    """
    batches = _token_batches(inputs, batch_size, device)
    table = EmbeddingInputClassifier(model).embeddings
    parts = []
    with torch.no_grad():
        for _, ids, mask in batches:
            parts.append(mean_pool(table(ids), mask))
    return torch.cat(parts)


def token_prediction_sensitivity(
    model: nn.Module,
    protected_model: Model,
    inputs: dict[str, Tensor],
    *,
    class_weights: Literal["uniform", "predicted"] | Tensor = "uniform",
    task_outputs: Literal["probs", "logits"] = "probs",
    batch_size: int = 64,
    device: torch.device | None = None,
) -> SensitivityResult:
    """APS of a ``model=hf_encoder`` classifier on token ids: gradients with respect to the input word embeddings.

    ``inputs = {"input_ids": [N, T], "attention_mask": [N, T]}`` (the model's ``featurize`` output). Per batch of
    ``batch_size`` texts (trimmed to its longest text), the embeddings ``E = word_embeddings(input_ids)`` are
    looked up without gradient and :func:`prediction_sensitivity` computes ``PS(x) = w^T |J(E)| v(E)`` of
    :class:`EmbeddingInputClassifier` and ``protected_model`` (called as ``protected_model(E, mask)``) over the
    features ``E[t, d]`` of the non-padding tokens: one forward and ``C + K`` backward passes per batch
    (``1 + 1`` with ``class_weights="predicted"`` and two groups), never one per text. Both models are in eval
    mode meanwhile (restored afterwards).
    """
    batches = _token_batches(inputs, batch_size, device)
    task = EmbeddingInputClassifier(model)
    table = task.embeddings
    parts = []
    with _eval_mode(task, protected_model):
        for _, ids, mask in batches:
            with torch.no_grad():
                embeds = table(ids)
            parts.append(
                prediction_sensitivity(
                    task, protected_model, embeds, mask, class_weights=class_weights, task_outputs=task_outputs
                )
            )
    per_sample = torch.cat(parts).cpu()
    return SensitivityResult(
        per_sample=per_sample,
        aps=float(per_sample.mean()),
        std=float(per_sample.std()) if len(per_sample) > 1 else 0.0,
        n=len(per_sample),
    )
