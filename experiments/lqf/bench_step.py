"""Cost of one LQF training step vs one plain fine-tuning step of the same layers, and K-FAC's extra cost.

Arms, each timed as one full optimizer step (forward, loss, backward, Adam update) on the same batch:

- ``plain``: nonlinear fine-tuning of the chosen layers, ``CE(f(x; w))``;
- ``lqf``: the linearized model ``f(x; w0) + J delta`` (one ``torch.func.jvp``), MSE loss, no preconditioner;
- ``lqf+kfac``: the same plus ``grad <- G^-1 grad A^-1`` per layer (factors fixed, as with ``kfac_update_every=0``).

Also reported: the one-off K-FAC factor computation (``KFAC.update`` on ``--kfac-samples`` inputs), with the exact
Fisher (one backward per class, ``kfac_update_ms``) and the sampled one (one backward, ``kfac_update_sampled_ms``;
median of 5), and the bytes held by the factors and their inverses, next to the bytes of the trained parameters.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/lqf/bench_step.py --out experiments/lqf/bench_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from trustml.methods.lqf import LinearizedNetwork, lqf_sample_losses, select_layers, swap_activations
from trustml.models.mlp import MLP, MLPConfig
from trustml.optim.kfac import KFAC

SETTINGS = {  # name: (input_dim, hidden_sizes, classes, batch)
    "digits_mlp": (64, [256, 128], 10, 64),
    "wide_mlp": (512, [1024, 1024], 100, 256),
}


def median_ms(step: Callable[[], None], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench(setting: str, linearize: str, repeats: int, kfac_samples: int) -> dict[str, float | str]:
    input_dim, hidden, classes, batch = SETTINGS[setting]
    torch.manual_seed(0)
    x, y = torch.randn(batch, input_dim), torch.randint(0, classes, (batch,))
    net = MLP(MLPConfig(hidden_sizes=hidden, dropout=0.0), num_classes=classes, input_dim=input_dim).eval()
    layers = select_layers(net, linearize)
    names = [f"{layer}.{p}" for layer in layers for p, _ in net.get_submodule(layer).named_parameters(recurse=False)]

    plain_params = [p for n, p in net.named_parameters() if n in names]
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    plain_opt = torch.optim.Adam(plain_params, lr=1e-3)

    def plain() -> None:
        plain_opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        plain_opt.step()

    plain_ms = median_ms(plain, repeats)

    lin_net = MLP(MLPConfig(hidden_sizes=hidden, dropout=0.0), num_classes=classes, input_dim=input_dim)
    lin_net.load_state_dict(net.state_dict())
    swap_activations(lin_net, layers[0], 0.1)
    lin = LinearizedNetwork(lin_net, names)
    lin_opt = torch.optim.Adam(lin.delta.parameters(), lr=1e-3)
    kfac = KFAC(lin.network, layers, "mse", damping=1.0)
    start = time.perf_counter()
    kfac.update(torch.randn(kfac_samples, input_dim))
    kfac_update_ms = 1000 * (time.perf_counter() - start)
    sampled = KFAC(lin.network, layers, "mse", damping=1.0, fisher="sampled")
    kfac_x = torch.randn(kfac_samples, input_dim)
    kfac_update_sampled_ms = median_ms(lambda: sampled.update(kfac_x), repeats=5, warmup=1)
    deltas = dict(zip(lin.names, lin.delta, strict=True))

    def lqf(precondition: bool) -> Callable[[], None]:
        def step() -> None:
            lin_opt.zero_grad()
            lqf_sample_losses(lin(x), y, "mse", 1.0).mean().backward()
            if precondition:
                for layer in layers:
                    w, b = deltas[f"{layer}.weight"], deltas[f"{layer}.bias"]
                    gw, gb = kfac.precondition(layer, w.grad, b.grad)  # type: ignore[arg-type]
                    w.grad.copy_(gw)  # type: ignore[union-attr]
                    b.grad.copy_(gb)  # type: ignore[union-attr, arg-type]
            lin_opt.step()

        return step

    lqf_ms = median_ms(lqf(False), repeats)
    kfac_ms = median_ms(lqf(True), repeats)
    param_bytes = sum(p.numel() * p.element_size() for p in plain_params)
    return {
        "setting": setting,
        "linearize": linearize,
        "batch": batch,
        "trained_params": sum(p.numel() for p in plain_params),
        "plain_ms": round(plain_ms, 3),
        "lqf_ms": round(lqf_ms, 3),
        "lqf_kfac_ms": round(kfac_ms, 3),
        "lqf_over_plain": round(lqf_ms / plain_ms, 2),
        "lqf_kfac_over_plain": round(kfac_ms / plain_ms, 2),
        "kfac_update_ms": round(kfac_update_ms, 1),
        "kfac_update_sampled_ms": round(kfac_update_sampled_ms, 1),
        "kfac_exact_over_sampled": round(kfac_update_ms / kfac_update_sampled_ms, 1),
        "kfac_samples": kfac_samples,
        "kfac_factor_bytes": kfac.memory_bytes(),
        "param_bytes": param_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--kfac-samples", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = [bench(s, lin, args.repeats, args.kfac_samples) for s in SETTINGS for lin in ("head", "all")]
    load = os.getloadavg()
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg_1_5_15": load, "rows": rows}
    for row in rows:
        print(json.dumps(row))
    print("load average (1, 5, 15 min):", load)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
