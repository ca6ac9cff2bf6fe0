"""LQF vs nonlinear fine-tuning on MASSIVE intents (60 classes) over frozen MiniLM embeddings, low-data regime.

Setup (fixed before any number was seen; README.md "MASSIVE" has the selection rule and the verdict criteria):

- Data: ``../shared/data/massive_add_data/updated/`` (train 1,500 / dev 500 / test 4,000 utterances, 60 intents,
  strongly imbalanced: 1 to 104 training utterances per intent). ``k`` = 5, 10, 25 training utterances per intent
  (``min(k, available)`` per intent) drawn from ``train`` per seed, or all of it ("full"); ``dev`` is the validation
  split, ``test`` the test split.
- Features: the offline all-MiniLM-L6-v2 encoder, frozen, mean-pooled (``model=hf_encoder``'s cached embeddings,
  computed once through :class:`trustml.models.hf_encoder.HFEncoderClassifier`). The trained / linearized part is
  the classifier head of ``model=hf_encoder`` with ``head_hidden_sizes=[256]``, ``dropout=0``: Linear 384 -> 256,
  GELU, Linear 256 -> 60 (built here as ``model=mlp`` with ``activation=gelu``, the same function on the cached
  embeddings). ``w0``: the pretrained, frozen encoder and a freshly initialized head (per seed). Only the head is
  linearized (``linearize=all`` over the head's two layers): the last transformer block was not (README: cost).
- Arms (SGD, momentum 0.9, 300 steps, batch min(32, n)): ``nonlinear`` (CE, GELU), ``naive_linear`` (linearized;
  CE, GELU, no preconditioner), ``lqf`` (linearized; leaky-ReLU 0.1, MSE on one-hot targets with scale 1, K-FAC
  damping 1 with the exact Fisher, factors once from the training inputs), each change removed alone:
  ``lqf_no_leaky`` (GELU kept), ``lqf_no_mse`` (CE; K-FAC refreshed every 10 steps from the batch),
  ``lqf_no_kfac``; and ``lqf_sampled`` (``lqf`` with ``kfac_fisher=sampled``: the factor update with one backward
  instead of 60).
- 3 seeds (0, 1, 2: the draw of the k examples, the head's initialization, the batch order); learning rate from
  {0.003, 0.01, 0.03, 0.1} per arm and k on mean dev accuracy (README).

``--nfr``: the update experiment. The *old* model is the same head (with leaky-ReLU 0.1 from the start, so that
the linearized update starts from exactly the old function) trained by CE (Adam 1e-3, 40 epochs, batch 64, seed 0)
on ``old/train`` (1,000 utterances). From it, on all of ``updated/train``: ``nonlinear`` (CE), ``naive_linear``
(linearized around the old weights, CE, no preconditioner), ``lqf`` (linearized, MSE, K-FAC) and ``lqf_ce``
(linearized, CE, K-FAC refreshed every 10 steps); same steps, lr grid, dev rule and 3 seeds (batch order). Reported:
test accuracy and the negative flip rate vs the old model, ``NFR = (1/n) #{i: old right, new wrong}``.
``--nfr --old-loss mse`` (added after the CE run showed MSE updates of a CE-trained old model breaking it): the old
model is trained with the squared loss instead, and every update uses it too: ``nonlinear_mse`` (nonlinear),
``linear_mse`` (linearized, no preconditioner), ``lqf`` (linearized, K-FAC).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/lqf/massive_lqf.py --out experiments/lqf/massive
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/lqf/massive_lqf.py --nfr --out experiments/lqf/massive_nfr
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/lqf/massive_lqf.py --nfr --old-loss mse \
        --out experiments/lqf/massive_nfr_mse
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trustml.data.massive import read_utterances
from trustml.methods.lqf import LinearQuadraticFineTuning, LQFConfig, lqf_sample_losses, swap_activations
from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig
from trustml.models.mlp import MLP, MLPConfig

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "massive_add_data"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "trustml" / "embeddings"
HIDDEN = [256]
CLASSES = 60
#: run in this order (the cells the verdicts need most first); reported as 5, 10, 25, full
SHOTS: list[int | None] = [10, None, 5, 25]
LRS = [0.003, 0.01, 0.03, 0.1]
SEEDS = [0, 1, 2]
STEPS = 300
LEAKY = 0.1
#: arm -> LQF options (None: nonlinear fine-tuning)
ARMS: dict[str, dict[str, Any] | None] = {
    "nonlinear": None,
    "naive_linear": {"loss": "ce", "leaky_relu_slope": 0.0, "precondition": "none"},
    "lqf": {"loss": "mse", "leaky_relu_slope": LEAKY, "precondition": "kfac"},
    "lqf_no_leaky": {"loss": "mse", "leaky_relu_slope": 0.0, "precondition": "kfac"},
    "lqf_no_mse": {"loss": "ce", "leaky_relu_slope": LEAKY, "precondition": "kfac", "kfac_update_every": 10},
    "lqf_no_kfac": {"loss": "mse", "leaky_relu_slope": LEAKY, "precondition": "none"},
    "lqf_sampled": {"loss": "mse", "leaky_relu_slope": LEAKY, "precondition": "kfac", "kfac_fisher": "sampled"},
}
#: with ``--old-loss mse`` (old model trained with the squared loss): every update uses the squared loss
NFR_ARMS_MSE: dict[str, dict[str, Any] | None] = {
    "nonlinear_mse": {"nonlinear": True, "loss": "mse"},
    "linear_mse": {"loss": "mse", "precondition": "none"},
    "lqf": {"loss": "mse", "precondition": "kfac"},
}
NFR_ARMS: dict[str, dict[str, Any] | None] = {
    "nonlinear": None,
    "naive_linear": {"loss": "ce", "precondition": "none"},
    "lqf": {"loss": "mse", "precondition": "kfac"},
    "lqf_ce": {"loss": "ce", "precondition": "kfac", "kfac_update_every": 10},
}

Data = tuple[Tensor, Tensor]


def load(stage: str, split: str) -> tuple[list[str], Tensor]:
    rows = read_utterances(DATA / stage / f"{split}.jsonl")
    return [r.text for r in rows], torch.tensor([r.label for r in rows])


def embedded_splits() -> dict[str, Data]:
    """Frozen MiniLM mean-pooled embeddings (cached on disk by ``model=hf_encoder``) of every split used."""
    encoder = HFEncoderClassifier(
        HFEncoderConfig(head_hidden_sizes=HIDDEN, dropout=0.0, cache_dir=str(CACHE)), num_classes=CLASSES
    )
    out = {}
    for name, (stage, split) in {
        "train": ("updated", "train"),
        "dev": ("updated", "dev"),
        "test": ("updated", "test"),
        "old_train": ("old", "train"),
        "old_dev": ("old", "dev"),
    }.items():
        texts, y = load(stage, split)
        x = encoder.featurize(texts)
        assert isinstance(x, Tensor)
        out[name] = (x.float(), y)
    return out


def head(seed: int) -> MLP:
    """The ``model=hf_encoder`` head (``head_hidden_sizes=[256]``, no dropout) on cached embeddings."""
    torch.manual_seed(seed)
    return MLP(MLPConfig(hidden_sizes=HIDDEN, dropout=0.0, activation="gelu"), num_classes=CLASSES, input_dim=384)


def draw(pool: Data, shots: int | None, seed: int) -> Data:
    x, y = pool
    if shots is None:
        return x, y
    g = torch.Generator().manual_seed(1000 + seed)
    rows = torch.cat(
        [
            torch.nonzero(y == c).squeeze(1)[torch.randperm(int((y == c).sum()), generator=g)[:shots]]
            for c in range(CLASSES)
        ]
    )
    return x[rows], y[rows]


def finetune(net: nn.Module, options: dict[str, Any] | None, train: Data, lr: float, seed: int) -> nn.Module:
    """``STEPS`` SGD steps of nonlinear fine-tuning (``options`` None: CE; ``{"nonlinear": True, "loss": "mse"}``:
    the squared loss on one-hot targets) or of ``method=lqf`` with ``options``."""
    x, y = train
    optimizer = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    if options is None or options.get("nonlinear"):
        kind = "ce" if options is None else options["loss"]
        model: nn.Module = net
        opt = optimizer(net.parameters())
        loss_fn = lambda logits, batch: lqf_sample_losses(logits, batch["y"], kind, 1.0).mean()  # noqa: E731
        prepare = lambda batch: batch  # noqa: E731
    else:
        config = LQFConfig(linearize="all", kfac_damping=1.0, **options)
        method = LinearQuadraticFineTuning(config, model=net, optimizer=optimizer, num_classes=CLASSES)
        if method.kfac is not None:
            method.kfac.update(x, method.model(x).detach() if options["loss"] == "ce" else None)
        model, opt = method.model, method.configure_optimizers()
        loss_fn, prepare = method.batch_loss, method.prepare_batch
    sgd_steps(model, opt, loss_fn, prepare, lambda rows: {"x": x[rows], "y": y[rows]}, len(y), seed)
    return model


def sgd_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Any,
    prepare: Any,
    batch_of: Any,
    n: int,
    seed: int,
) -> None:
    """``STEPS`` optimizer steps over shuffled batches of ``min(32, n)`` rows (reshuffled each epoch, seeded):
    ``batch_of(rows)`` builds the batch, ``prepare`` is the method's batch hook, ``loss_fn(logits, batch)``."""
    g = torch.Generator().manual_seed(seed)
    batch_size = min(32, n)
    order: list[Tensor] = []
    for _ in range(STEPS):
        if not order:
            order = list(torch.randperm(n, generator=g).split(batch_size))
        batch = prepare(batch_of(order.pop(0)))
        opt.zero_grad()
        loss_fn(model(batch["x"]), batch).backward()
        opt.step()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor | None:
    logits = model(x)
    return logits.argmax(1) if torch.isfinite(logits).all() else None


def accuracy(pred: Tensor | None, y: Tensor) -> float:
    return 0.0 if pred is None else float((pred == y).float().mean())


def main_grid(data: dict[str, Data], lrs: list[float], out: Path, shots_run: list[int | None]) -> None:
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    for shots in shots_run:
        for arm, options in ARMS.items():
            for lr in lrs:
                for seed in SEEDS:
                    train = draw(data["train"], shots, seed)
                    model = finetune(head(seed), options, train, lr, seed)
                    runs.append(
                        {
                            "shots": shots or "full",
                            "n_train": len(train[1]),
                            "arm": arm,
                            "lr": lr,
                            "seed": seed,
                            "val": accuracy(predict(model, data["dev"][0]), data["dev"][1]),
                            "test": accuracy(predict(model, data["test"][0]), data["test"][1]),
                        }
                    )
            print(f"{shots or 'full'} {arm} done ({time.perf_counter() - start:.0f}s)", flush=True)
            (out / "runs.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    summarize(runs, out, list(ARMS), ["5", "10", "25", "full"], "test")


def nfr_grid(data: dict[str, Data], lrs: list[float], out: Path, old_loss: str) -> None:
    old = head(0)
    swap_activations(old, "body.0", LEAKY)  # leaky-ReLU from the start: f_lin(.; w0) is exactly the old model
    opt = torch.optim.Adam(old.parameters(), lr=1e-3)
    x, y = data["old_train"]
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        for rows in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            lqf_sample_losses(old(x[rows]), y[rows], old_loss, 1.0).mean().backward()
            opt.step()
    old.eval()
    old_state = {k: v.clone() for k, v in old.state_dict().items()}
    test_x, test_y = data["test"]
    old_pred = predict(old, test_x)
    assert old_pred is not None
    old_right = old_pred == test_y
    summary: dict[str, Any] = {
        "old_dev_acc": accuracy(predict(old, data["old_dev"][0]), data["old_dev"][1]),
        "old_test_acc": float(old_right.float().mean()),
    }
    print(summary, flush=True)
    runs: list[dict[str, Any]] = []
    arms = NFR_ARMS if old_loss == "ce" else NFR_ARMS_MSE
    for arm, options in arms.items():
        for lr in lrs:
            for seed in SEEDS:
                net = head(0)
                swap_activations(net, "body.0", LEAKY)
                net.load_state_dict(old_state)
                lqf_options = None if options is None else {**options, "leaky_relu_slope": 0.0}  # already leaky
                model = finetune(net, lqf_options, data["train"], lr, seed)
                pred = predict(model, test_x)
                runs.append(
                    {
                        "shots": "full",
                        "arm": arm,
                        "lr": lr,
                        "seed": seed,
                        "val": accuracy(predict(model, data["dev"][0]), data["dev"][1]),
                        "test": accuracy(pred, test_y),
                        "nfr": 1.0 if pred is None else float((old_right & (pred != test_y)).float().mean()),
                        "pfr": 0.0 if pred is None else float((~old_right & (pred == test_y)).float().mean()),
                    }
                )
        print(f"nfr {arm} done", flush=True)
        (out / "runs.json").write_text(json.dumps({**summary, "runs": runs}, indent=1) + "\n")
    summarize(runs, out, list(arms), ["full"], "test", extra=("nfr", "pfr"))


def summarize(
    runs: list[dict[str, Any]], out: Path, arms: list[str], cols: list[str], metric: str, extra: tuple[str, ...] = ()
) -> None:
    """Selection rule: per (arm, shots), the lr with the best mean dev accuracy over seeds (ties: the smaller lr)."""
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        for shots in cols:
            cell = [r for r in runs if r["arm"] == arm and str(r["shots"]) == shots]
            if not cell:
                continue
            best_lr = max(
                sorted({r["lr"] for r in cell}),
                key=lambda lr: (statistics.mean(r["val"] for r in cell if r["lr"] == lr), -lr),
            )
            chosen = [r for r in cell if r["lr"] == best_lr]
            entry = {"lr": best_lr, "n_seeds": len(chosen), "val_mean": 100 * statistics.mean(r["val"] for r in chosen)}
            for key in (metric, *extra):
                values = [100 * r[key] for r in chosen]
                entry[f"{key}_mean"] = statistics.mean(values)
                entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            if "n_train" in chosen[0]:
                entry["n_train"] = [r["n_train"] for r in chosen]
            table.setdefault(arm, {})[shots] = entry
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    keys = (metric, *extra)
    if len(cols) == 1:
        lines = ["| arm | lr | " + " | ".join(f"{k} (%)" for k in keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for arm, row in table.items():
            e = row[cols[0]]
            lines.append(
                f"| {arm} | {e['lr']} | "
                + " | ".join(f"{e[f'{k}_mean']:.1f} ± {e[f'{k}_std']:.1f}" for k in keys)
                + " |"
            )
    else:
        lines = ["| arm | " + " | ".join(f"k={c}" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for arm, row in table.items():
            lines.append(
                f"| {arm} | "
                + " | ".join(
                    f"{row[c][f'{metric}_mean']:.1f} ± {row[c][f'{metric}_std']:.1f} (lr {row[c]['lr']})"
                    if c in row
                    else "not run"
                    for c in cols
                )
                + " |"
            )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    if len(cols) == 1:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, row in table.items():
        xs = [i for i, c in enumerate(cols) if c in row]
        ax.errorbar(
            xs,
            [row[cols[i]][f"{metric}_mean"] for i in xs],
            yerr=[row[cols[i]][f"{metric}_std"] for i in xs],
            label=arm,
            capsize=3,
            marker="o",
        )
    ax.set_xticks(list(range(len(cols))), cols)
    ax.set_xlabel("training utterances per intent (MASSIVE, 60 intents)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_shots.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/lqf/massive"))
    parser.add_argument("--lrs", type=float, nargs="+", default=LRS, help="learning-rate grid (default: %(default)s)")
    parser.add_argument("--nfr", action="store_true", help="the update / negative-flip experiment instead")
    parser.add_argument("--old-loss", choices=["ce", "mse"], default="ce", help="--nfr: the old model's loss")
    parser.add_argument(
        "--shots", nargs="+", default=[str(s or "full") for s in SHOTS], help="cells to run (default: %(default)s)"
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="only summarize the runs.json of these folders into --out"
    )
    args = parser.parse_args()
    if args.merge:
        args.out.mkdir(parents=True, exist_ok=True)
        runs, seen = [], set()
        for folder in args.merge:  # a cell run twice (same shots, arm, lr, seed): the first folder's run is kept
            for r in json.loads((folder / "runs.json").read_text())["runs"]:
                if (key := (str(r["shots"]), r["arm"], r["lr"], r["seed"])) not in seen:
                    seen.add(key)
                    runs.append(r)
        (args.out / "runs.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
        summarize(runs, args.out, list(ARMS), ["5", "10", "25", "full"], "test")
        return
    if not DATA.is_dir():
        sys.exit(f"MASSIVE data not found: {DATA} (../shared/data/massive_add_data)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    data = embedded_splits()
    print({k: tuple(v[0].shape) for k, v in data.items()}, flush=True)
    if args.nfr:
        nfr_grid(data, list(args.lrs), args.out, args.old_loss)
    else:
        main_grid(data, list(args.lrs), args.out, [None if s == "full" else int(s) for s in args.shots])


if __name__ == "__main__":
    main()
