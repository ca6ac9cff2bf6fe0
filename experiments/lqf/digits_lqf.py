"""LQF vs nonlinear fine-tuning on digits in the low-data regime, with the paper's ablation (Achille et al., 2021).

Setup (fixed before any test number was seen; see README.md for the selection rule):

- sklearn digits, one stratified split with seed 0: 25% test, 15% validation, the rest the *pool*; features
  standardized with the source pool's statistics.
- *Pretraining* (the ``w0`` every arm starts from): an MLP 64 -> 256 -> 128 (ReLU, no dropout) trained by ERM (CE,
  Adam 1e-3, 40 epochs, batch 64) on the pool's images of digits 0-4 (the source task).
- *Fine-tuning* (the target task): digits 5-9 (5-way), ``k`` = 5, 10, 25 training images per class drawn from the
  pool, or all of the pool ("full"); validation and test: the split's images of digits 5-9. The body keeps its
  pretrained weights, the 5-way head is freshly initialized (per seed).
- Arms (all layers fine-tuned or linearized; SGD with momentum 0.9, 300 steps, batch min(32, n)):
  ``nonlinear`` (CE, ReLU), ``naive_linear`` (linearized; CE, ReLU, no preconditioner), ``lqf`` (linearized;
  leaky-ReLU 0.1, MSE on one-hot targets, K-FAC with damping 1), and ``lqf`` with each change removed alone:
  ``lqf_no_leaky`` (ReLU), ``lqf_no_mse`` (CE; K-FAC factors refreshed every 10 steps), ``lqf_no_kfac``.
- 3 seeds (the draw of the k examples, the head's initialization, the batch order); learning rate from
  {0.01, 0.03, 0.1, 0.3} chosen per arm and k on validation accuracy (README).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/lqf/digits_lqf.py --out experiments/lqf/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from trustml.methods.lqf import LinearQuadraticFineTuning, LQFConfig
from trustml.models.mlp import MLP, MLPConfig

HIDDEN = [256, 128]
SOURCE, TARGET = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
SHOTS: list[int | None] = [5, 10, 25, None]
LRS = [0.01, 0.03, 0.1, 0.3]
SEEDS = [0, 1, 2]
STEPS = 300
#: arm -> LQF options (None: nonlinear fine-tuning)
ARMS: dict[str, dict[str, Any] | None] = {
    "nonlinear": None,
    "naive_linear": {"loss": "ce", "leaky_relu_slope": 0.0, "precondition": "none"},
    "lqf": {"loss": "mse", "leaky_relu_slope": 0.1, "precondition": "kfac"},
    "lqf_no_leaky": {"loss": "mse", "leaky_relu_slope": 0.0, "precondition": "kfac"},
    "lqf_no_mse": {"loss": "ce", "leaky_relu_slope": 0.1, "precondition": "kfac", "kfac_update_every": 10},
    "lqf_no_kfac": {"loss": "mse", "leaky_relu_slope": 0.1, "precondition": "none"},
}


def splits() -> dict[str, tuple[Tensor, Tensor]]:
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.25, stratify=y, random_state=0)
    pool, val = train_test_split(rest, test_size=0.15 / 0.75, stratify=y[rest], random_state=0)
    source = pool[np.isin(y[pool], SOURCE)]
    mean, std = x[source].mean(0), x[source].std(0)
    std[std < 1e-6] = 1.0
    x = (x - mean) / std

    def part(rows: np.ndarray, classes: list[int]) -> tuple[Tensor, Tensor]:
        rows = rows[np.isin(y[rows], classes)]
        labels = np.searchsorted(classes, y[rows])
        return torch.from_numpy(x[rows]), torch.from_numpy(labels).long()

    return {
        "source": part(pool, SOURCE),
        "pool": part(pool, TARGET),
        "val": part(val, TARGET),
        "test": part(test, TARGET),
        "source_val": part(val, SOURCE),
    }


def pretrain(data: dict[str, tuple[Tensor, Tensor]]) -> tuple[dict[str, Tensor], float]:
    torch.manual_seed(0)
    net = MLP(MLPConfig(hidden_sizes=HIDDEN, dropout=0.0), num_classes=len(SOURCE), input_dim=64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data["source"]
    for _ in range(40):
        for rows in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
    with torch.no_grad():
        xv, yv = data["source_val"]
        acc = float((net(xv).argmax(1) == yv).float().mean())
    return {k: v for k, v in net.state_dict().items() if k.startswith("body.")}, acc


def draw(pool: tuple[Tensor, Tensor], shots: int | None, seed: int) -> tuple[Tensor, Tensor]:
    x, y = pool
    if shots is None:
        return x, y
    g = torch.Generator().manual_seed(1000 + seed)
    rows = torch.cat(
        [
            torch.nonzero(y == c).squeeze(1)[torch.randperm(int((y == c).sum()), generator=g)[:shots]]
            for c in range(len(TARGET))
        ]
    )
    return x[rows], y[rows]


def finetune(arm: str, body: dict[str, Tensor], train: tuple[Tensor, Tensor], lr: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # fresh head (seeded), pretrained body
    net = MLP(MLPConfig(hidden_sizes=HIDDEN, dropout=0.0), num_classes=len(TARGET), input_dim=64)
    net.load_state_dict(body, strict=False)
    x, y = train
    optimizer = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    options = ARMS[arm]
    if options is None:
        model: nn.Module = net
        opt = optimizer(net.parameters())
        loss_fn = lambda logits, batch: F.cross_entropy(logits, batch["y"])  # noqa: E731
        prepare = lambda batch: batch  # noqa: E731
    else:
        config = LQFConfig(linearize="all", kfac_damping=1.0, **options)
        method = LinearQuadraticFineTuning(config, model=net, optimizer=optimizer, num_classes=len(TARGET))
        if method.kfac is not None:
            method.kfac.update(x, method.model(x).detach() if options["loss"] == "ce" else None)
        model, opt = method.model, method.configure_optimizers()
        loss_fn, prepare = method.batch_loss, method.prepare_batch
    g = torch.Generator().manual_seed(seed)
    batch_size = min(32, len(y))
    order: list[Tensor] = []
    for _ in range(STEPS):
        if not order:
            order = list(torch.randperm(len(y), generator=g).split(batch_size))
        rows = order.pop(0)
        batch = prepare({"x": x[rows], "y": y[rows]})
        opt.zero_grad()
        loss_fn(model(batch["x"]), batch).backward()
        opt.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    x, y = data
    logits = model(x)
    return float((logits.argmax(1) == y).float().mean()) if torch.isfinite(logits).all() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/lqf/results"))
    parser.add_argument("--lrs", type=float, nargs="+", default=LRS, help="learning-rate grid (default: %(default)s)")
    args = parser.parse_args()
    lrs = list(args.lrs)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    data = splits()
    body, source_acc = pretrain(data)
    print(f"pretrained on digits {SOURCE}: source val acc {source_acc:.3f}", flush=True)
    runs = []
    start = time.perf_counter()
    for shots in SHOTS:
        for arm in ARMS:
            for lr in lrs:
                for seed in SEEDS:
                    train = draw(data["pool"], shots, seed)
                    model = finetune(arm, body, train, lr, seed)
                    runs.append(
                        {
                            "shots": shots or "full",
                            "n_train": len(train[1]),
                            "arm": arm,
                            "lr": lr,
                            "seed": seed,
                            "val": accuracy(model, data["val"]),
                            "test": accuracy(model, data["test"]),
                        }
                    )
            print(f"{shots or 'full'} {arm} done ({time.perf_counter() - start:.0f}s)", flush=True)
    (args.out / "runs.json").write_text(json.dumps({"source_val_acc": source_acc, "runs": runs}, indent=1) + "\n")
    summarize(runs, args.out)


def summarize(runs: list[dict[str, Any]], out: Path) -> None:
    """Selection rule: per (arm, shots), the lr with the best mean validation accuracy over seeds (ties: smaller)."""
    table: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        for shots in [s or "full" for s in SHOTS]:
            cell = [r for r in runs if r["arm"] == arm and r["shots"] == shots]
            best_lr = max(
                sorted({r["lr"] for r in cell}),
                key=lambda lr: (statistics.mean(r["val"] for r in cell if r["lr"] == lr), -lr),
            )
            tests = [100 * r["test"] for r in cell if r["lr"] == best_lr]
            table.setdefault(arm, {})[str(shots)] = {
                "lr": best_lr,
                "test_mean": statistics.mean(tests),
                "test_std": statistics.stdev(tests),
                "val_mean": 100 * statistics.mean(r["val"] for r in cell if r["lr"] == best_lr),
            }
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    cols = [str(s or "full") for s in SHOTS]
    lines = ["| arm | " + " | ".join(f"k={c}" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm, row in table.items():
        lines.append(
            f"| {arm} | "
            + " | ".join(f"{row[c]['test_mean']:.1f} ± {row[c]['test_std']:.1f} (lr {row[c]['lr']})" for c in cols)
            + " |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(cols))
    for arm, row in table.items():
        ax.errorbar(
            xs,
            [row[c]["test_mean"] for c in cols],
            yerr=[row[c]["test_std"] for c in cols],
            label=arm,
            capsize=3,
            marker="o",
        )
    ax.set_xticks(list(xs), cols)
    ax.set_xlabel("training examples per class (digits 5-9)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_shots.png", dpi=120)


if __name__ == "__main__":
    main()
