"""The old/new ensemble reference of one seed: the mean of the old and the untreated new model's class probabilities.

ELODI (Zhao et al. 2022) distils towards such an ensemble because it flips less than either member; here it is
the reference point of the table (it costs two models at inference). Old = ``logs/seed<S>/old`` (best
checkpoint), new = ``logs/seed<S>/bcwi_plain`` (its best checkpoint is the trained, uninterpolated new model).
Writes ``logs/seed<S>/ensemble.json`` with test error and NFR against the old model, in the units of
``results.json`` (fractions). Usage: ``ensemble.py SEED_DIR MASSIVE_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from trustml.data.massive import MassiveConfig, MassiveDataModule
from trustml.methods.old_model import split_batches
from trustml.metrics.flips import error_rate, negative_flip_rate
from trustml.run_record import load_model_from_run

torch.set_num_threads(1)


@torch.no_grad()
def probabilities(model: torch.nn.Module, split, batch_size: int = 256) -> torch.Tensor:
    """Softmax class probabilities of ``model`` on every sample of ``split``, in order."""
    return torch.cat([model(x).softmax(-1) for x, _ in split_batches(split, batch_size, torch.device("cpu"))])


def main(seed_dir: Path, data_dir: str) -> None:
    old, _ = load_model_from_run(seed_dir / "old")
    new, _ = load_model_from_run(seed_dir / "bcwi_plain")
    data = MassiveDataModule(MassiveConfig(path=data_dir, stage="updated"))
    data.setup()
    data.map_inputs(old.featurize)
    test = data.splits["test"]
    p_old, p_new = probabilities(old, test), probabilities(new, test)
    target = test.labels
    old_pred, new_pred, ens_pred = p_old.argmax(-1), p_new.argmax(-1), ((p_old + p_new) / 2).argmax(-1)
    result = {
        "test/er_old": error_rate(old_pred, target),
        "test/er_new": error_rate(new_pred, target),
        "test/nfr_new": negative_flip_rate(old_pred, new_pred, target),
        "test/er_ensemble": error_rate(ens_pred, target),
        "test/nfr_ensemble": negative_flip_rate(old_pred, ens_pred, target),
    }
    (seed_dir / "ensemble.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
