"""Epoch wall time of PC training against untreated training, interleaved in one process.

Usage: ``python experiments/pc_training/epoch_time.py OLD_RUN_DIR [--epochs 30] [--repeats 9]``

On a shared machine the load drifts between runs of a sweep, so this script alternates the variants
(untreated, FD-KL, FD-LM, LDI with cached old logits, and FD-KL with old logits computed online) within each
repeat, on the digits setup of ``run.sh``, and reports the median training-epoch time of each and its
ratio to untreated. Writes the table between ``<!-- BEGIN epoch-time -->`` markers in README.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from summarize import replace_block

from trustml.callbacks.epoch_metrics import EpochMetricsCSV
from trustml.data.digits import DigitsConfig, DigitsDataModule
from trustml.methods.pc import PCConfig, PositiveCongruentTraining
from trustml.models.mlp import MLP, MLPConfig

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "untreated": {"objective": "untreated"},
    "fd_kl (cached)": {"distance": "kl"},
    "fd_lm (cached)": {"distance": "lm"},
    "ldi (cached)": {"distance": "ldi", "beta": 0.0},
    "fd_kl (online)": {"distance": "kl", "online_old_logits": True},
}


def median_epoch_time(old_run_dir: str, options: dict, epochs: int, seed: int) -> float:
    """Median training-epoch seconds of one fit of the new digits model with ``options``."""
    pl.seed_everything(seed, verbose=False)
    data = DigitsDataModule(DigitsConfig(val_fraction=0.15, test_fraction=0.5))
    model = MLP(MLPConfig(hidden_sizes=[256, 128], dropout=0.1), num_classes=10, input_dim=64)
    method = PositiveCongruentTraining(
        PCConfig(old_run_dirs=[old_run_dir], **options),
        model=model,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        num_classes=10,
    )
    with tempfile.TemporaryDirectory() as tmp:
        timer = EpochMetricsCSV(str(Path(tmp) / "metrics.csv"))
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        trainer.fit(method, datamodule=data)
    return statistics.median(timer.epoch_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_run_dir")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, options in VARIANTS.items():
            times[name].append(median_epoch_time(args.old_run_dir, options, args.epochs, seed=repeat))
        print(f"repeat {repeat}: " + ", ".join(f"{name} {values[-1]:.3f}s" for name, values in times.items()))
    base = statistics.median(times["untreated"])
    lines = ["| variant | median epoch s | ratio to untreated |", "|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f} | {median / base:.2f} |")
    table = "\n".join(lines)
    print(table)
    readme = HERE / "README.md"
    readme.write_text(replace_block(readme.read_text(), "epoch-time", table))


if __name__ == "__main__":
    main()
