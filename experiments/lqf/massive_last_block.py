"""LQF on MASSIVE intents with the pretrained feed-forward sublayer of MiniLM's last block linearized.

The head-only study (``massive_lqf.py``) linearizes a freshly initialized head, which is not the paper's setting:
LQF linearizes layers of the *pretrained* network. Here ``w0`` is the pretrained feed-forward sublayer of
all-MiniLM-L6-v2's block 5 (the last of six: ``intermediate.dense`` 384 -> 1536, GELU, ``output.dense`` 1536 -> 384,
residual, LayerNorm) plus a new linear head (384 -> 60, per-seed initialization) on the mean-pooled tokens. The
embeddings, blocks 0-4 and block 5's self-attention stay frozen, so the self-attention output (the sublayer's input)
is computed once and cached (:func:`sublayer_inputs`). Trained/linearized: 1.18M of the block's 1.77M weights and
the head; in ``method=lqf`` terms ``linearize=last_k_layers k=4 exclude=["*LayerNorm"]`` on this network.
Why not the whole block: in a first try of this script with the whole block linearized (attention included;
not kept), a linearized step cost several times a nonlinear one and one exact K-FAC factor update took minutes of
CPU, so the grid below (288 fine-tunings) would not have fitted on the 2-core machine.

Setup (fixed before the grid was run; README "MASSIVE, last block's feed-forward linearized"):

- Data and k as in ``massive_lqf.py``: ``updated/{train,dev,test}``, k = 5, 10, 25 utterances per intent or all,
  drawn per seed; utterances cut at 32 tokens.
- Linearized arms linearize ``intermediate.dense``, ``output.dense`` and the head around ``w0``; the LayerNorm
  stays at ``w0`` (K-FAC covers Linear layers only). The network is in eval mode (dropout off) in every arm;
  ``nonlinear`` trains the same layers and the LayerNorm.
- Arms (SGD, momentum 0.9, 300 steps, batch min(32, n)): ``nonlinear`` (CE, GELU), ``naive_linear`` (CE, GELU, no
  preconditioner), ``lqf`` (leaky-ReLU 0.1 instead of the GELU, MSE on one-hot targets with scale 1, K-FAC damping 1,
  *sampled* Fisher (one backward per factor update; the head study found it as accurate as the exact one, and the
  exact update costs one backward per class), factors once from up to 2,048 training utterances), and
  ``lqf_no_leaky`` / ``lqf_no_mse`` (CE, factors refreshed every 10 steps from the batch) / ``lqf_no_kfac``. K-FAC
  treats every token position of a Linear layer's input as a sample (padding positions included).
- 3 seeds (0, 1, 2); learning rate from {0.01, 0.03, 0.1} (the head study's grid less 0.003, never selected
  there) per arm and k by the best mean dev accuracy over the seeds (ties: the smaller lr), then test accuracy of
  that lr, mean ± std. Cells run in the order k = 10, full, 5, 25 and arms in the order of ``ARMS``.

``--time-factors``: the time of one K-FAC factor update, exact (one backward per class) vs sampled (one backward),
on ``--factor-utterances`` training utterances (2,048; median of 3), and the factors' memory; ``--time-steps``: the
time of a training step (batch 32) of every arm, median of 20 after 5 warm-up steps. Each updates its part of
``timing.json`` and keeps the other.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/lqf/massive_last_block.py   # -> massive_block/
    OMP_NUM_THREADS=1 .venv/bin/python experiments/lqf/massive_last_block.py --time-factors --time-steps
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trustml.data.massive import read_utterances
from trustml.methods.lqf import LinearQuadraticFineTuning, LQFConfig, lqf_sample_losses

sys.path.insert(0, str(Path(__file__).resolve().parent))
from massive_lqf import DATA, SEEDS, accuracy, sgd_steps, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "trustml" / "lqf_block5_ffn_inputs.pt"
CLASSES = 60
MAX_TOKENS = 32
LEAKY = 0.1
SHOTS: list[int | None] = [10, None, 5, 25]
LINEAR_ONLY = ["*LayerNorm"]
#: learning-rate grid: the head study's without 0.003, which it never selected (cost: a step here is 3-5x dearer)
LRS = [0.01, 0.03, 0.1]
#: run in this order (the arms the verdicts need first)
ARMS: dict[str, dict[str, Any] | None] = {
    "nonlinear": None,
    "lqf": {"loss": "mse", "leaky_relu_slope": LEAKY, "precondition": "kfac", "kfac_fisher": "sampled"},
    "naive_linear": {"loss": "ce", "leaky_relu_slope": 0.0, "precondition": "none"},
    "lqf_no_mse": {
        "loss": "ce",
        "leaky_relu_slope": LEAKY,
        "precondition": "kfac",
        "kfac_fisher": "sampled",
        "kfac_update_every": 10,
    },
    "lqf_no_kfac": {"loss": "mse", "leaky_relu_slope": LEAKY, "precondition": "none"},
    "lqf_no_leaky": {"loss": "mse", "leaky_relu_slope": 0.0, "precondition": "kfac", "kfac_fisher": "sampled"},
}

#: block 5's self-attention output ``[N, L, 384]`` (the feed-forward sublayer's input), attention mask, labels
Data = tuple[Tensor, Tensor, Tensor]


def minilm():
    from transformers import AutoModel

    from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained

    return AutoModel.from_pretrained(resolve_pretrained(OFFLINE_MINILM), attn_implementation="eager").eval()


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, 1, 1, L]``: 0 on tokens, the dtype's minimum on padding keys (eager attention adds it to the logits)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def sublayer_inputs(encoder) -> dict[str, Data]:
    """Block 5's self-attention output for every split (blocks 0-4 and the attention frozen), cached on disk."""
    if CACHE.is_file():
        return torch.load(CACHE)
    from transformers import AutoTokenizer

    from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(OFFLINE_MINILM))
    block5 = encoder.encoder.layer[5]
    out: dict[str, Data] = {}
    for split in ("train", "dev", "test"):
        rows = read_utterances(DATA / "updated" / f"{split}.jsonl")
        enc = tokenizer(
            [r.text for r in rows], padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        states = []
        for start in range(0, len(rows), 256):
            part = {k: v[start : start + 256] for k, v in enc.items()}
            hidden = encoder(**part, output_hidden_states=True).hidden_states[5]
            states.append(block5.attention(hidden, additive_mask(part["attention_mask"], hidden.dtype))[0])
        out[split] = (torch.cat(states), enc["attention_mask"], torch.tensor([r.label for r in rows]))
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, CACHE)
    return out


class FeedForwardClassifier(nn.Module):
    """``head(mean_pool(LayerNorm(u + W2 act(W1 u + b1) + b2)))`` over cached attention outputs ``u``: block 5's
    feed-forward sublayer (BERT's ``intermediate`` and ``output``) and a linear head.

    The input is a pair ``(u [B, L, d], mask [B, L])``.
    """

    def __init__(self, intermediate: nn.Module, output: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.intermediate, self.output = intermediate, output
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: tuple[Tensor, Tensor]) -> Tensor:
        attended, mask = x
        states = self.output(self.intermediate(attended), attended)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return self.head((states * weights).sum(1) / weights.sum(1).clamp_min(1.0))


def network(block5: nn.Module, seed: int) -> FeedForwardClassifier:
    torch.manual_seed(seed)
    net = FeedForwardClassifier(copy.deepcopy(block5.intermediate), copy.deepcopy(block5.output), 384, CLASSES)
    return net.eval()


def trim(h: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Cut a batch to its longest utterance (dynamic padding)."""
    length = int(m.sum(1).max())
    return h[:, :length], m[:, :length]


def draw(pool: Data, shots: int | None, seed: int) -> Data:
    h, m, y = pool
    if shots is None:
        return pool
    g = torch.Generator().manual_seed(1000 + seed)
    rows = torch.cat(
        [
            torch.nonzero(y == c).squeeze(1)[torch.randperm(int((y == c).sum()), generator=g)[:shots]]
            for c in range(CLASSES)
        ]
    )
    return h[rows], m[rows], y[rows]


def finetune(
    net: FeedForwardClassifier, options: dict[str, Any] | None, train: Data, lr: float, seed: int
) -> nn.Module:
    """300 SGD steps (``massive_lqf.sgd_steps``) of nonlinear fine-tuning (``options`` None) or of ``method=lqf``
    with ``options``."""
    h, m, y = train
    optimizer = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    if options is None:
        model: nn.Module = net
        opt = optimizer(net.parameters())
        loss_fn = lambda logits, batch: lqf_sample_losses(logits, batch["y"], "ce", 1.0).mean()  # noqa: E731
        prepare = lambda batch: batch  # noqa: E731
    else:
        config = LQFConfig(linearize="all", exclude=LINEAR_ONLY, kfac_damping=1.0, **options)
        method = LinearQuadraticFineTuning(config, model=net, optimizer=optimizer, num_classes=CLASSES)
        if method.kfac is not None:
            rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:2048]
            x0 = trim(h[rows], m[rows])
            method.kfac.update(x0, method.model(x0).detach() if options["loss"] == "ce" else None)
        model, opt = method.model, method.configure_optimizers()
        loss_fn, prepare = method.batch_loss, method.prepare_batch
    sgd_steps(model, opt, loss_fn, prepare, lambda rows: {"x": trim(h[rows], m[rows]), "y": y[rows]}, len(y), seed)
    return model


@torch.no_grad()
def predict(model: nn.Module, data: Data) -> Tensor | None:
    h, m, _ = data
    preds = []
    for start in range(0, len(h), 512):
        logits = model(trim(h[start : start + 512], m[start : start + 512]))
        if not torch.isfinite(logits).all():
            return None
        preds.append(logits.argmax(1))
    return torch.cat(preds)


def check_block(encoder, block5: nn.Module, data: dict[str, Data]) -> float:
    """Max |difference| on real tokens between MiniLM's last hidden state and the sublayer on the cached input."""
    from transformers import AutoTokenizer

    from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(OFFLINE_MINILM))
    texts = [r.text for r in read_utterances(DATA / "updated" / "dev.jsonl")[:16]]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        full = encoder(**enc).last_hidden_state
        mine = block5.feed_forward_chunk(data["dev"][0][:16])
    keep = enc["attention_mask"].bool()
    return float((full[keep] - mine[keep]).abs().max())


def time_factors(block5: nn.Module, data: dict[str, Data], utterances: int = 2048) -> dict[str, Any]:
    """One K-FAC factor update (exact vs sampled Fisher) on ``utterances`` training utterances (all of them when
    fewer): median CPU seconds of 3, factor MiB."""
    h, m, y = data["train"]
    rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:utterances]
    x0 = trim(h[rows], m[rows])
    report: dict[str, Any] = {"utterances": len(rows), "token_rows": int(x0[1].numel())}
    for fisher in ("exact", "sampled"):
        config = LQFConfig(linearize="all", exclude=LINEAR_ONLY, kfac_fisher=fisher)
        opt = partial(torch.optim.SGD, lr=0.01)
        method = LinearQuadraticFineTuning(config, model=network(block5, 0), optimizer=opt, num_classes=CLASSES)
        assert method.kfac is not None
        times = []
        for _ in range(3):
            start = time.process_time()
            method.kfac.update(x0)
            times.append(time.process_time() - start)
        report[fisher] = {"cpu_s_median": statistics.median(times), "factor_mib": method.kfac.memory_bytes() / 2**20}
    return report


def time_steps(block5: nn.Module, data: dict[str, Data]) -> dict[str, Any]:
    """CPU seconds of one training step (batch 32, forward + backward + preconditioning + SGD) of every arm."""
    h, m, y = data["train"]
    report: dict[str, Any] = {}
    for arm, options in ARMS.items():
        net = network(block5, 0)
        optimizer = partial(torch.optim.SGD, lr=0.01, momentum=0.9)
        if options is None:
            model, opt = net, optimizer(net.parameters())
            loss_fn = lambda logits, batch: lqf_sample_losses(logits, batch["y"], "ce", 1.0).mean()  # noqa: E731
            prepare = lambda batch: batch  # noqa: E731
        else:
            config = LQFConfig(linearize="all", exclude=LINEAR_ONLY, kfac_damping=1.0, **options)
            method = LinearQuadraticFineTuning(config, model=net, optimizer=optimizer, num_classes=CLASSES)
            model, opt, loss_fn, prepare = (
                method.model,
                method.configure_optimizers(),
                method.batch_loss,
                method.prepare_batch,
            )
        times = []
        for step in range(25):
            rows = torch.arange(32 * step, 32 * step + 32)
            start = time.process_time()
            batch = prepare({"x": trim(h[rows], m[rows]), "y": y[rows]})
            opt.zero_grad()
            loss_fn(model(batch["x"]), batch).backward()
            opt.step()
            if step >= 5:
                times.append(time.process_time() - start)
        report[arm] = {"cpu_s_median": statistics.median(times)}
    base = report["nonlinear"]["cpu_s_median"]
    for arm in report:
        report[arm]["x_nonlinear"] = report[arm]["cpu_s_median"] / base
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/lqf/massive_block"))
    parser.add_argument("--lrs", type=float, nargs="+", default=LRS)
    parser.add_argument("--shots", nargs="+", default=[str(s or "full") for s in SHOTS])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="only summarize these folders' runs")
    parser.add_argument("--time-factors", action="store_true", help="time the K-FAC factor update (exact/sampled)")
    parser.add_argument("--factor-utterances", type=int, default=2048, help="utterances of the timed factor update")
    parser.add_argument("--time-steps", action="store_true", help="time a training step of every arm")
    args = parser.parse_args()
    if args.merge:
        args.out.mkdir(parents=True, exist_ok=True)
        runs = [r for folder in args.merge for r in json.loads((folder / "runs.json").read_text())["runs"]]
        (args.out / "runs.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
        summarize(complete_cells(runs), args.out, list(ARMS), ["5", "10", "25", "full"], "test")
        return
    if not DATA.is_dir():
        sys.exit(f"MASSIVE data not found: {DATA} (../shared/data/massive_add_data)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    encoder = minilm()
    data = sublayer_inputs(encoder)
    block5 = encoder.encoder.layer[5]
    print(f"sublayer on cached inputs vs MiniLM: max |diff| {check_block(encoder, block5, data):.2e}", flush=True)
    if args.time_factors or args.time_steps:
        timing = args.out / "timing.json"  # a part not measured now keeps its former entry
        report = json.loads(timing.read_text()) if timing.is_file() else {}
        if args.time_factors:
            report["factors"] = time_factors(block5, data, args.factor_utterances)
            report["factors"]["load_average"] = os.getloadavg()
        if args.time_steps:
            report["steps"] = time_steps(block5, data)
            report["load_average"] = os.getloadavg()
        print(json.dumps(report, indent=1), flush=True)
        timing.write_text(json.dumps(report, indent=1) + "\n")
        return
    runs_file = args.out / "runs.json"
    runs: list[dict[str, Any]] = json.loads(runs_file.read_text())["runs"] if runs_file.is_file() else []
    done = {(str(r["shots"]), r["arm"], r["lr"], r["seed"]) for r in runs}
    start = time.perf_counter()
    for shots in [None if s == "full" else int(s) for s in args.shots]:
        for arm in args.arms:
            for lr in args.lrs:
                for seed in SEEDS:
                    if (str(shots or "full"), arm, lr, seed) in done:
                        continue
                    train = draw(data["train"], shots, seed)
                    model = finetune(network(block5, seed), ARMS[arm], train, lr, seed)
                    runs.append(
                        {
                            "shots": shots or "full",
                            "n_train": len(train[2]),
                            "arm": arm,
                            "lr": lr,
                            "seed": seed,
                            "val": accuracy(predict(model, data["dev"]), data["dev"][2]),
                            "test": accuracy(predict(model, data["test"]), data["test"][2]),
                        }
                    )
                    runs_file.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
            print(f"{shots or 'full'} {arm} done ({time.perf_counter() - start:.0f}s)", flush=True)
    summarize(complete_cells(runs), args.out, list(ARMS), ["5", "10", "25", "full"], "test")


def complete_cells(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the (arm, k) cells that ran every lr and seed (a cell cut short is left out of the table)."""
    count: dict[tuple[str, str], int] = {}
    for r in runs:
        count[(r["arm"], str(r["shots"]))] = count.get((r["arm"], str(r["shots"])), 0) + 1
    full = len(LRS) * len(SEEDS)
    return [r for r in runs if count[(r["arm"], str(r["shots"]))] >= full]


if __name__ == "__main__":
    main()
