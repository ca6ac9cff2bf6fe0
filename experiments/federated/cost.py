"""Cost of the in-process simulation: per-round overhead over local training, and 100 rounds x 1,000 devices.

Digits (scikit-learn, real), 1,000 IID devices (about one sample each), 100 devices (about 11) or 10
devices (about 108), 10 devices per round, one local epoch, MLP 64-64-10 with SGD. Per round, all measured
in this process:

* ``round``: :meth:`RoundLoop.run_round`'s wall time (selection, state swaps, the clients' local training
  in the Trainer-free client loop, aggregation; no test evaluation, no checkpoint);
* ``client fits``: the sum of the selected clients' local-training wall times inside that round;
* ``pure PyTorch``: right after the round, the same devices' local epochs as a bare loop (same model,
  optimizer, batch size and rows; no data loader, no simulation);
* ``bare FedAvg``: right after that, the same round as bare PyTorch FedAvg (:func:`bare_fedavg_round`): the
  pure loop plus what it omits that any federated round does (loading the global weights, reading the update,
  averaging the updates), on the method's batch loss (``method.batch_loss``);
* ``round, Lightning fits``: the round with ``client_loop=lightning`` (a Lightning Trainer per client fit,
  the previous implementation), for reference.

Runs of 21 rounds (6 with Lightning), ``--repeats`` times, the first round of each run dropped as warm-up;
ratios are medians over rounds of ``round / pure PyTorch``, each pair timed back to back. Then the wall time
of 100 rounds with 1,000 devices through ``FedAvg.run`` (test accuracy evaluated every round and a
checkpoint after every round, as the accuracy curves are made).

Usage: ``python -m experiments.federated.cost [--rounds 100] [--repeats 3] [--write-readme]``.
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
from torch.nn.utils import parameters_to_vector

from experiments.federated.readme import write_readme_block
from experiments.federated.run_grid import digits_case, make_trainer_factory
from trustml.data.base import Split
from trustml.federation.client import ClientTrainer
from trustml.federation.flat_state import FlatLayout, get_flat
from trustml.federation.options import FederationConfig
from trustml.federation.population import ClientPopulation
from trustml.federation.rounds import RoundLoop
from trustml.federation.server import FederatedServer
from trustml.federation.server_optim import FedAvgServer
from trustml.federation.simulation import InProcessClients
from trustml.federation.strategies import FedAvg
from trustml.methods.erm import ERM

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- cost:begin -->", "<!-- cost:end -->"
#: Devices in the population: about 108, 11 and 1 training samples per device (7, 1 and 1 batches of 16).
DEVICE_COUNTS = (10, 100, 1000)


def simulate(num_devices: int, rounds: int, eval_every: int) -> tuple[list[dict[str, Any]], float]:
    """Run FedAvg on digits; return the per-round records and the total wall time."""
    datamodule, new_method = digits_case(seed=0)
    options = FederationConfig(
        rounds=rounds,
        partition={"kind": "iid", "num_clients": num_devices},
        selection={"clients_per_round": 10},
        server={"seed": 0, "eval_every": eval_every},
        runtime={"resume": False},
    )
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        FedAvg(options).run(new_method(), datamodule, make_trainer_factory(Path(root)))
        total = time.perf_counter() - start
        history = [json.loads(line) for line in (Path(root) / "federation" / "rounds.jsonl").read_text().splitlines()]
    return history, total


def bare_local_epochs(method: ERM, train: Split, device_rows: list[np.ndarray], batch_size: int) -> float:
    """Seconds of the devices' local epochs as a bare PyTorch loop (same model, SGD, batch size and rows)."""
    start = time.perf_counter()
    for rows in device_rows:
        rows_t = torch.as_tensor(rows)
        optimizer = partial(torch.optim.SGD, lr=0.1)(method.model.parameters())
        for batch in rows_t[torch.randperm(len(rows_t))].split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(method.model(train.inputs[batch]), train.labels[batch]).backward()
            optimizer.step()
    return time.perf_counter() - start


def bare_fedavg_round(
    method: ERM, train: Split, device_rows: list[np.ndarray], batch_size: int, weights: torch.Tensor
) -> float:
    """Seconds of the devices' round as bare PyTorch FedAvg: what :func:`bare_local_epochs` leaves out and any
    federated round must do. Per device: load the global weights (a copy per tensor), the bare local epoch on the
    method's own batch loss (``method.batch_loss``, as the method's training step computes it), read
    the update (one concatenation minus the global weights); then the sample-weighted mean of the updates."""
    start = time.perf_counter()
    params = list(method.model.parameters())
    sizes = [p.numel() for p in params]
    updates, counts = [], []
    for rows in device_rows:
        with torch.no_grad():
            for param, piece in zip(params, weights.split(sizes), strict=True):
                param.copy_(piece.view_as(param))
        rows_t = torch.as_tensor(rows)
        optimizer = torch.optim.SGD(params, lr=0.1)
        for batch in rows_t[torch.randperm(len(rows_t))].split(batch_size):
            optimizer.zero_grad()
            method.batch_loss(method.model(train.inputs[batch]), {"y": train.labels[batch]}).backward()
            optimizer.step()
        updates.append(parameters_to_vector(params).detach() - weights)
        counts.append(len(rows))
    (torch.tensor(counts, dtype=torch.float32) / sum(counts)) @ torch.stack(updates)  # timed, then dropped
    return time.perf_counter() - start


def paired_rounds(num_devices: int, rounds: int, client_loop: str, root: Path) -> list[dict[str, float]]:
    """Per round of FedAvg's :class:`RoundLoop`: its wall time, its clients' training time, and right after it
    the bare loop on the same devices (so each ratio compares two timings taken within a fraction of a second)."""
    datamodule, new_method = digits_case(seed=0)
    options = FederationConfig(
        rounds=rounds,
        partition={"kind": "iid", "num_clients": num_devices},
        selection={"clients_per_round": 10},
        client={"loop": client_loop},
        server={"seed": 0},
    )
    population = ClientPopulation.from_datamodule(datamodule, options.partition)
    method = new_method()
    local = ClientTrainer(method, datamodule, make_trainer_factory(root), options.client)
    clients = InProcessClients(local, population)
    selected: list[np.ndarray] = []

    def transport(round_index: int, period: int, devices: np.ndarray, weights: torch.Tensor) -> Any:
        selected.append(devices)
        return clients(round_index, period, devices, weights)

    layout = FlatLayout.of(method.model)
    server = FederatedServer(
        get_flat(method.model, layout),
        FedAvgServer(),
        selection=options.selection,
        server=options.server,
        privacy=options.privacy,
        seed=0,
    )
    loop = RoundLoop(
        server=server,
        rounds=rounds,
        num_periods=1,
        sizes_at=population.sizes,
        transport=transport,
        evaluate=lambda weights: {},
        eval_every=rounds + 1,
        state_dir=root,
        fingerprint={},
    )
    train, windows = datamodule.splits["train"], population.windows(0)
    records = []
    for index in range(rounds):
        record = loop.run_round(index)
        rows = [windows[d] for d in selected[-1].tolist()]
        bare = bare_local_epochs(method, train, rows, datamodule.batch_size)
        fedavg = bare_fedavg_round(method, train, rows, datamodule.batch_size, server.weights)
        fits = record["client_seconds_mean"] * record["answered"]
        records.append({"round_s": record["round_s"], "fits_s": fits, "bare_s": bare, "fedavg_s": fedavg})
    return records


def measure(rounds: int, repeats: int) -> dict[str, Any]:
    """All cost numbers as a dict (medians over rounds and repeats, first round of each run excluded)."""
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    for num_devices in DEVICE_COUNTS:
        loop_rounds: list[dict[str, float]] = []
        lightning_rounds: list[dict[str, float]] = []
        with tempfile.TemporaryDirectory() as root:
            for _ in range(repeats):
                loop_rounds += paired_rounds(num_devices, 21, "auto", Path(root))[1:]
                lightning_rounds += paired_rounds(num_devices, 6, "lightning", Path(root))[1:]

        def column(records: list[dict[str, float]], key: str) -> np.ndarray:
            return np.array([r[key] for r in records])

        round_s, fits, bare, fedavg = (column(loop_rounds, k) for k in ("round_s", "fits_s", "bare_s", "fedavg_s"))
        ratio = round_s / bare
        results[f"overhead_{num_devices}"] = {
            "round_ms": 1000 * float(np.median(round_s)),
            "client_fits_ms": 1000 * float(np.median(fits)),
            "pure_pytorch_ms": 1000 * float(np.median(bare)),
            "round_over_client_fits": float(np.median(round_s / fits)),
            "round_over_pure_pytorch": float(np.median(ratio)),
            "round_over_pure_pytorch_q25_q75": [float(q) for q in np.quantile(ratio, [0.25, 0.75])],
            "bare_fedavg_ms": 1000 * float(np.median(fedavg)),
            "round_over_bare_fedavg": float(np.median(round_s / fedavg)),
            "bare_fedavg_over_pure_pytorch": float(np.median(fedavg / bare)),
            "lightning_round_ms": 1000 * float(np.median(column(lightning_rounds, "round_s"))),
            "lightning_round_over_pure_pytorch": float(
                np.median(column(lightning_rounds, "round_s") / column(lightning_rounds, "bare_s"))
            ),
        }
    history, total = simulate(1000, rounds=rounds, eval_every=1)
    results["thousand_devices"] = {
        "rounds": rounds,
        "wall_s": total,
        "per_round_s": total / rounds,
        "final_test_acc": history[-1]["test_acc"],
        "median_round_s_without_eval": float(statistics.median(r["round_s"] for r in history)),
    }
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown tables of :func:`measure`'s numbers."""
    lines = [
        f"Machine: {results['machine']}, torch threads {results['torch_threads']}.",
        "",
        "| devices | round (ms) | client fits (ms) | pure PyTorch (ms) | round / client fits | round / pure PyTorch "
        "(median [q25, q75]) | bare FedAvg (ms) | bare FedAvg / pure PyTorch | round / bare FedAvg "
        "| round, Lightning fits (ms) | Lightning round / pure PyTorch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in DEVICE_COUNTS:
        o = results[f"overhead_{n}"]
        q25, q75 = o["round_over_pure_pytorch_q25_q75"]
        lines.append(
            f"| {n} | {o['round_ms']:.1f} | {o['client_fits_ms']:.1f} | {o['pure_pytorch_ms']:.1f} | "
            f"{o['round_over_client_fits']:.3f} | {o['round_over_pure_pytorch']:.2f} [{q25:.2f}, {q75:.2f}] | "
            f"{o['bare_fedavg_ms']:.1f} | {o['bare_fedavg_over_pure_pytorch']:.2f} | "
            f"{o['round_over_bare_fedavg']:.2f} | "
            f"{o['lightning_round_ms']:.0f} | {o['lightning_round_over_pure_pytorch']:.1f} |"
        )
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = measure(args.rounds, args.repeats)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cost.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    print(text)
    if args.write_readme:
        write_readme_block(text, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
