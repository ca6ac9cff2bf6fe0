"""The old model of a model update: frozen networks from earlier runs, their ensemble, and an output cache.

:func:`load_old_model` rebuilds the networks of completed run directories (through
:func:`trustml.run_record.load_model_from_run`, weights loaded with ``weights_only=True``), checks that they
predict the same classes, under the same label names, from the same inputs as the new run, and averages
their logits when there are several. :class:`OutputCache` keeps a frozen model's output per global sample
id so that each sample goes through the old model once, not once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor, nn

from trustml.data.base import Inputs, Split, take
from trustml.errors import CheckpointError
from trustml.run_record import load_model_from_run, read_run


class LogitEnsemble(nn.Module):
    """Mean logits of several classifiers (of any architectures) over the same classes: ``(1/M) sum_m f_m(x)``."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise CheckpointError("an ensemble of zero old models was requested; give at least one old run directory")
        self.members = nn.ModuleList(members)

    def forward(self, x: Any) -> Tensor:
        """Average of the members' logits, shape ``[B, C]``."""
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def text_input_signature(model: nn.Module) -> tuple[Any, ...] | None:
    """What a text model's ``featurize`` turns texts into; ``None`` for models that read no text.

    Cached embeddings depend on the encoder: ``("embeddings", encoder, max_length)``. Token ids depend only on
    the tokenizer: ``("tokens", tokenizer, max_length)``, so models of different sizes that share a tokenizer
    (e.g. a 3-layer and a 6-layer MiniLM) read each other's inputs.
    """
    if not hasattr(model, "featurize"):
        return None
    max_length = getattr(model, "max_length", None)
    if getattr(model, "cache_embeddings", False):
        return ("embeddings", getattr(model, "source", None), max_length)
    tokenizer = getattr(model, "tokenizer_source", None) or getattr(model, "source", None)
    return ("tokens", tokenizer, max_length)


def check_run_dirs(run_dirs: Sequence[str | Path], option: str, checkpoint: str = "best") -> None:
    """Cheap checks before anything is built: at least one dir, each a completed run with the checkpoint."""
    if len(run_dirs) == 0:
        raise CheckpointError(
            f"{option} is empty: an ensemble of zero old models; set {option}=[<run dir>, ...] to earlier runs"
        )
    for run_dir in run_dirs:
        read_run(run_dir)
        ckpt = Path(run_dir) / "checkpoints" / f"{checkpoint}.ckpt"
        if not ckpt.is_file():
            raise CheckpointError(f"{option}: old checkpoint {ckpt} is missing; point {option} at a completed run")


def check_labels(
    run_dir: str | Path, spec: dict[str, Any], num_classes: int, label_names: Sequence[str] | None
) -> None:
    """Refuse an old model whose class count or label map differs from the new run's data."""
    if spec.get("num_classes") != num_classes:
        raise CheckpointError(
            f"old model of {run_dir} predicts {spec.get('num_classes')} classes but the new data has {num_classes}; "
            "old and new models must share the label set"
        )
    old_names = spec.get("label_names")
    if label_names is not None and old_names is not None and list(old_names) != list(label_names):
        raise CheckpointError(
            f"label map of the old model of {run_dir} {list(old_names)} differs from the new data's "
            f"{list(label_names)}; train the old model on the same labels (same data config)"
        )


def check_inputs(
    run_dir: str | Path, spec: dict[str, Any], old_model: nn.Module, input_dim: int | None, new_model: nn.Module | None
) -> None:
    """Refuse an old model that cannot read the new run's inputs (feature width, or text featurization)."""
    if input_dim is not None and spec.get("input_dim") not in (None, input_dim):
        raise CheckpointError(
            f"old model of {run_dir} reads {spec.get('input_dim')} features but the new data has {input_dim}"
        )
    if new_model is not None and text_input_signature(old_model) != text_input_signature(new_model):
        raise CheckpointError(
            f"old model of {run_dir} featurizes texts as {text_input_signature(old_model)} but the new model as "
            f"{text_input_signature(new_model)} (cached embeddings of an encoder, or token ids of a tokenizer, and "
            "max_length); the old model reads the new run's inputs, so use the same model.tokenizer (or "
            "model.pretrained)/max_length/cache_embeddings for both"
        )


def load_old_model(
    run_dirs: Sequence[str | Path],
    num_classes: int,
    label_names: Sequence[str] | None = None,
    input_dim: int | None = None,
    new_model: nn.Module | None = None,
    checkpoint: str = "best",
) -> nn.Module:
    """The frozen old model: one run's network, or the logit-averaging ensemble of several runs' networks.

    Each run must have been trained for ``num_classes`` classes named ``label_names`` on inputs of width
    ``input_dim``; a text model must featurize texts as ``new_model`` does (the new run's inputs are fed to
    it). Any mismatch raises :class:`~trustml.errors.CheckpointError` naming the run directory.
    """
    if len(run_dirs) == 0:
        raise CheckpointError("an ensemble of zero old models was requested; give at least one old run directory")
    members = []
    for run_dir in run_dirs:
        model, spec = load_model_from_run(run_dir, checkpoint)
        check_labels(run_dir, spec, num_classes, label_names)
        check_inputs(run_dir, spec, model, input_dim, new_model)
        members.append(model)
    old = members[0] if len(members) == 1 else LogitEnsemble(members)
    return old.eval().requires_grad_(False)


class OutputCache:
    """Outputs of a frozen function per global sample id, each computed once: on first request or by :meth:`fill`.

    ``cache(x, index)`` returns ``compute(x)`` row by row, calling ``compute`` only on the rows whose ids
    have not been seen; ``samples_computed`` counts the rows ever computed.
    """

    def __init__(self, compute: Callable[[Inputs], Tensor]) -> None:
        self.compute = compute
        self.values: Tensor | None = None
        self.known: Tensor | None = None
        self.samples_computed = 0

    def _is_known(self, index: Tensor) -> Tensor:
        if self.known is None:
            return torch.zeros_like(index, dtype=torch.bool)
        inside = index < len(self.known)
        return inside & self.known[index.clamp(max=len(self.known) - 1)]

    def _store(self, index: Tensor, outputs: Tensor) -> None:
        size = int(index.max()) + 1
        if self.values is None or self.known is None:
            self.values = outputs.new_zeros((size, *outputs.shape[1:]))
            self.known = torch.zeros(size, dtype=torch.bool, device=outputs.device)
        elif size > len(self.values):
            extra = size - len(self.values)
            self.values = torch.cat([self.values, self.values.new_zeros((extra, *self.values.shape[1:]))])
            self.known = torch.cat([self.known, self.known.new_zeros(extra)])
        self.values[index] = outputs
        self.known[index] = True

    @torch.no_grad()
    def __call__(self, x: Inputs, index: Tensor) -> Tensor:
        """Cached outputs for the samples ``index`` whose inputs are ``x`` (rows aligned)."""
        missing = (~self._is_known(index)).nonzero().squeeze(1)
        if len(missing):
            rows = missing if len(missing) < len(index) else None
            outputs = self.compute(x if rows is None else take(x, rows.cpu() if isinstance(x, list) else rows))
            self._store(index if rows is None else index[rows], outputs.detach())
            self.samples_computed += len(missing)
        return self.values[index]  # type: ignore[index]  # filled above

    def fill(self, split: Split, batch_size: int, device: torch.device) -> None:
        """Compute the outputs of every sample of ``split`` not cached yet, ``batch_size`` rows at a time.

        Token inputs go in order of length, so that each chunk is padded only to lengths like its own (the
        outputs are stored by sample id, so the order does not matter).
        """
        inputs = split.inputs
        if isinstance(inputs, dict) and "attention_mask" in inputs:
            split = split.subset(torch.sort(inputs["attention_mask"].sum(dim=1), stable=True).indices.numpy())
        for x, index in split_batches(split, batch_size, device):
            self(x, index)


def split_batches(split: Split, batch_size: int, device: torch.device) -> Iterator[tuple[Inputs, Tensor]]:
    """``(inputs, sample ids)`` of consecutive ``batch_size``-row chunks of ``split``, moved to ``device``."""
    for start in range(0, len(split), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(split)))
        yield move_data_to_device(take(split.inputs, rows), device), split.index[rows].to(device)


@torch.no_grad()
def embed_split(embed: Callable[[Inputs], Tensor], split: Split, batch_size: int, device: torch.device) -> Tensor:
    """``embed`` applied to every sample of ``split`` in order, ``[len(split), D]``."""
    return torch.cat([embed(x) for x, _ in split_batches(split, batch_size, device)])
