"""Cost of the in-process simulation: per-round overhead over local training, and 100 rounds x 1,000 devices.

Digits (scikit-learn, real), 1,000 IID devices (about one sample each) or 100 devices, 10 devices per
round, one local epoch, MLP 64-64-10 with SGD. Three numbers per round, all measured in this process:

* ``round``: the simulation's wall time for the round (selection, state swaps, Lightning local fits,
  aggregation), without the test evaluation;
* ``client fits``: the sum of the selected clients' Lightning ``fit`` wall times inside that round;
* ``pure PyTorch``: the same devices' local epochs as a bare loop (same model, optimizer, batch size and
  rows; no Lightning, no simulation), timed right after the run.

``round / client fits`` is the simulation's own overhead; ``round / pure PyTorch`` adds Lightning's per-fit
cost, which dominates for a model this small. Then the wall time of 100 rounds with 1,000 devices (test
accuracy evaluated every round, as the accuracy curves do).

Usage: ``python experiments/federated/cost.py [--rounds 100] [--write-readme]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from experiments.federated.run_grid import digits_case, make_trainer_factory
from trustml.federation.devices import DevicePopulation
from trustml.federation.flat_state import FlatLayout, get_flat
from trustml.federation.options import FederationConfig
from trustml.federation.server import FederatedServer
from trustml.federation.server_optim import FedAvgServer
from trustml.federation.strategies import FedAvg

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- cost:begin -->", "<!-- cost:end -->"


def simulate(num_devices: int, rounds: int, eval_every: int) -> tuple[list[dict[str, Any]], float]:
    """Run FedAvg on digits; return the per-round records and the total wall time."""
    datamodule, new_method = digits_case(seed=0)
    options = {"num_devices": num_devices, "clients_per_round": 10, "rounds": rounds, "partition": "iid",
               "seed": 0, "eval_every": eval_every, "resume": False}
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        FedAvg(**options).run(new_method(), datamodule, make_trainer_factory(Path(root)))
        total = time.perf_counter() - start
        history = [json.loads(line) for line in (Path(root) / "federation" / "rounds.jsonl").read_text().splitlines()]
    return history, total


def pure_round_seconds(num_devices: int, rounds: int) -> list[float]:
    """Per round, the bare-PyTorch time of the same devices' local epochs (same selection RNG as the run)."""
    datamodule, new_method = digits_case(seed=0)
    options = FederationConfig(num_devices=num_devices, clients_per_round=10, rounds=rounds, partition="iid", seed=0)
    population = DevicePopulation.from_datamodule(datamodule, options)
    method = new_method()
    layout = FlatLayout.of(method.model)
    server = FederatedServer(get_flat(method.model, layout), FedAvgServer(), options, seed=0)
    train = datamodule.splits["train"]
    timings = []
    for _ in range(rounds):
        devices = server.select(population.sizes(0)).devices
        start = time.perf_counter()
        for device in devices.tolist():
            rows = torch.as_tensor(population.windows(0)[device])
            optimizer = partial(torch.optim.SGD, lr=0.1)(method.model.parameters())
            for batch in rows[torch.randperm(len(rows))].split(datamodule.batch_size):
                optimizer.zero_grad()
                F.cross_entropy(method.model(train.inputs[batch]), train.labels[batch]).backward()
                optimizer.step()
        timings.append(time.perf_counter() - start)
    return timings


def measure(rounds: int) -> dict[str, Any]:
    """All cost numbers as a dict (medians over rounds, first round excluded as warm-up)."""
    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                               "torch_threads": torch.get_num_threads()}
    for num_devices in (100, 1000):
        history, _ = simulate(num_devices, rounds=21, eval_every=1000)
        pure = pure_round_seconds(num_devices, 21)
        round_s = np.array([r["round_s"] for r in history])[1:]
        fits = np.array([r["client_seconds_mean"] * r["answered"] for r in history])[1:]
        results[f"overhead_{num_devices}"] = {
            "round_ms": 1000 * float(np.median(round_s)),
            "client_fits_ms": 1000 * float(np.median(fits)),
            "pure_pytorch_ms": 1000 * float(np.median(pure[1:])),
            "round_over_client_fits": float(np.median(round_s / fits)),
            "round_over_pure_pytorch": float(np.median(round_s / np.array(pure[1:]))),
        }
    history, total = simulate(1000, rounds=rounds, eval_every=1)
    results["thousand_devices"] = {
        "rounds": rounds, "wall_s": total, "per_round_s": total / rounds,
        "final_test_acc": history[-1]["test_acc"],
        "median_round_s_without_eval": float(statistics.median(r["round_s"] for r in history)),
    }
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown tables of :func:`measure`'s numbers."""
    lines = [
        f"Machine: {results['machine']}, torch threads {results['torch_threads']}.",
        "",
        "| devices | round (ms) | client fits (ms) | pure PyTorch (ms) | round / client fits | round / pure PyTorch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in (100, 1000):
        o = results[f"overhead_{n}"]
        lines.append(f"| {n} | {o['round_ms']:.0f} | {o['client_fits_ms']:.0f} | {o['pure_pytorch_ms']:.1f} | "
                     f"{o['round_over_client_fits']:.3f} | {o['round_over_pure_pytorch']:.1f} |")
    t = results["thousand_devices"]
    lines += [
        "",
        f"{t['rounds']} rounds, 1,000 devices, 10 per round, test accuracy every round: **{t['wall_s']:.0f} s** "
        f"wall ({t['per_round_s']:.2f} s per round; median round without evaluation "
        f"{t['median_round_s_without_eval']:.2f} s); final test accuracy {t['final_test_acc']:.3f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = measure(args.rounds)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cost.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    print(text)
    if args.write_readme:
        readme = HERE / "README.md"
        body = readme.read_text()
        start, end = body.index(MARK_BEGIN) + len(MARK_BEGIN), body.index(MARK_END)
        readme.write_text(body[:start] + "\n" + text + "\n" + body[end:])


if __name__ == "__main__":
    main()
