"""Canary audit of a text classifier: write a training file with a repeated canary, then measure its exposure.

trustml trains classifiers, not language models, so a canary is a labelled sentence ("my pin code is
4 7 1 9", label ``L``) inserted ``repetitions`` times into a JSONL training file that
``data=text_classification data.train_path=...`` reads. After training, every candidate sentence of the
secret space is scored by the classifier's loss on ``L``; a model that memorized the secret's tokens gives
the inserted sentence a lower loss than the other candidates, which all share the template and label.
The spec (secret, template, label, alphabet) is saved beside the file so the audit needs only the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trustml.data.text_classification import read_records
from trustml.data.text_files import read_text
from trustml.errors import CheckpointError, ConfigError
from trustml.privacy.audit.canary import (
    DEFAULT_TEMPLATE,
    candidate_secrets,
    exposure,
    format_canary,
    insert_canary,
    random_secret,
    sample_other_secrets,
    sampled_exposure,
    score_candidates,
    secret_index,
)
from trustml.privacy.audit.runs import checkpoint_test_accuracy, load_audited_run
from trustml.privacy.audit.scoring import model_inputs
from trustml.run_record import write_json_atomic


@dataclass(frozen=True)
class CanarySpec:
    """What was inserted: the secret, its sentence template and alphabet, the label and how often."""

    secret: tuple[str, ...]
    label: str
    repetitions: int
    template: str = DEFAULT_TEMPLATE
    alphabet: str = "0123456789"

    @property
    def sentence(self) -> str:
        """The canary sentence as it appears in the training file."""
        return format_canary(self.secret, self.template)

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON to ``path``."""
        write_json_atomic(Path(path), {**asdict(self), "sentence": self.sentence})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CanarySpec:
        """Read a spec written by :meth:`save`; a clear error for a missing or foreign file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"canary spec not found: {path} (written by `trustml-audit insert-canary`)")
        try:
            data = json.loads(read_text(path, "utf-8", option="the canary spec (written by insert-canary as UTF-8)"))
            return cls(
                secret=tuple(data["secret"]),
                label=str(data["label"]),
                repetitions=int(data["repetitions"]),
                template=str(data["template"]),
                alphabet=str(data["alphabet"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is not a canary spec ({exc}); write one with `trustml-audit insert-canary`"
            ) from None


def write_canary_training_file(
    source: str | Path,
    dest: str | Path,
    label: str,
    repetitions: int,
    secret_length: int = 4,
    alphabet: str = "0123456789",
    template: str = DEFAULT_TEMPLATE,
    seed: int = 0,
    text_field: str = "text",
    label_field: str = "label",
    encoding: str = "utf-8",
) -> CanarySpec:
    """Copy the records of ``source`` (JSONL/CSV) to the JSONL ``dest`` with the canary inserted ``repetitions`` times.

    The secret is drawn uniformly (seeded) from ``alphabet``; the spec is written to ``<dest>.canary.json``.
    ``source`` is decoded by ``encoding`` (``--encoding``; ``auto`` detects, see :mod:`trustml.data.text_files`);
    ``dest`` is written as UTF-8.
    """
    if "{secret}" not in template:
        raise ConfigError(f"canary template '{template}' has no {{secret}} placeholder")
    if repetitions < 0:
        raise ConfigError(f"canary repetitions must be >= 0, got {repetitions}")
    if secret_length < 1 or len(set(alphabet)) < 2:
        raise ConfigError("a canary secret needs length >= 1 and an alphabet of at least 2 symbols")
    records = read_records(source, text_field, label_field, encoding=encoding, encoding_option="--encoding")
    labels = sorted({r.label for r in records})
    if label not in labels:
        raise ConfigError(f"canary label '{label}' does not occur in {source} (labels: {labels})")
    spec = CanarySpec(
        secret=random_secret(secret_length, alphabet, seed),
        label=label,
        repetitions=repetitions,
        template=template,
        alphabet=alphabet,
    )
    rows = [{text_field: r.text, label_field: r.label} for r in records]
    rows = insert_canary(rows, {text_field: spec.sentence, label_field: label}, repetitions, seed=seed)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    spec.save(canary_spec_path(dest))
    return spec


def canary_spec_path(training_file: str | Path) -> Path:
    """Where :func:`write_canary_training_file` puts the spec of ``training_file``."""
    return Path(str(training_file) + ".canary.json")


def canary_exposure(
    run_dir: str | Path,
    spec: CanarySpec,
    checkpoint: str = "best",
    batch_size: int = 512,
    sample: int = 0,
    sample_seed: int = 0,
    exact_top: int = 10,
) -> dict[str, Any]:
    """Rank the canary's secret among all candidates by the trained classifier's loss on the canary label.

    Returns rank, number of candidates, exposure (bits), whether the secret ranks first, and the test accuracy
    of the ranked checkpoint (``test_acc``, recomputed on the run's test split: ``results.json`` holds the best
    checkpoint's). With ``sample > 0`` (and fewer than all candidates) the rank is estimated from ``sample``
    other candidates drawn uniformly (seed ``sample_seed``; :func:`~trustml.privacy.audit.canary.sampled_exposure`:
    ``rank`` is then the estimate, with ``rank_low``/``rank_high`` its 95% interval), unless that interval
    reaches down to ``exact_top``: then every candidate is scored and the rank is exact (``exact: true``), so
    whether the secret is in the top ``exact_top`` is never an estimate.
    """
    run = load_audited_run(run_dir, checkpoint)
    model, label_names = run.model, run.label_names
    if spec.label not in label_names:
        raise CheckpointError(f"run {run_dir} has no label '{spec.label}' (labels: {label_names}); wrong run or spec")
    label = label_names.index(spec.label)
    space = len(spec.alphabet) ** len(spec.secret)

    def loss_on_label(texts: list[str]) -> torch.Tensor:
        logits = model(model_inputs(model, texts))
        return F.cross_entropy(logits, torch.full((len(texts),), label), reduction="none")

    def sentences(secrets: list[tuple[str, ...]]) -> list[str]:
        return [format_canary(s, spec.template) for s in secrets]

    estimate: dict[str, Any] = {}
    if 0 < sample < space - 1:
        others = sample_other_secrets(spec.secret, sample, spec.alphabet, sample_seed)
        secret_loss = float(score_candidates(loss_on_label, sentences([spec.secret]), batch_size)[0])
        sampled = sampled_exposure(secret_loss, score_candidates(loss_on_label, sentences(others), batch_size), space)
        estimate = {**asdict(sampled), "sample_seed": sample_seed}
    if estimate and estimate["rank_low"] > exact_top:
        # first only if no other candidate scores at or below it, which a sample can rule out but not confirm
        result = {**estimate, "ranks_first": False if estimate["rank_low"] > 1 else None, "exact": False}
    else:
        secrets = candidate_secrets(len(spec.secret), spec.alphabet)
        losses = score_candidates(loss_on_label, sentences(secrets), batch_size)
        exact = asdict(exposure(losses.numpy(), secret_index(spec.secret, spec.alphabet)))
        result = {**exact, "exact": True, **({"sampled_estimate": estimate} if estimate else {})}
    return {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        **checkpoint_test_accuracy(run, batch_size),
        **asdict(spec),
        "sentence": spec.sentence,
        **result,
    }
