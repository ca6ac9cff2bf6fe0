"""Speed at population scale: set-up time, set-up memory and round time for 1,000 to 1,000,000 registered devices.

Data: synthetic, not digits (digits has 1,078 training rows, fewer than the devices): ``2 x devices`` training rows
of 16 Gaussian features around one of 10 class means (``x = mu_y + N(0, I)``, ``mu_c ~ N(0, I)``, seed 0) and 1,000
test rows; ``federation.partition.kind=iid``, so every device holds exactly 2 rows (uniform, no empty device) and
a round does the same work whatever the population. 10 devices per round (uniform selection), one local epoch,
MLP 16-64-10 with SGD, the Trainer-free client loop (as FedAvg runs it). Each population size runs in a fresh
subprocess, so that one size's memory does not leak into the next:

* ``set-up``: what ``FedAvg.run`` does before the first round, timed: the partition
  (:meth:`ClientPopulation.from_datamodule`), ``partition.json`` + ``partition.npz``
  (:func:`~trustml.federation.strategies.write_partition`), the empty-device warnings, every device's planned DP
  rounds (:func:`~trustml.federation.participation.planned_rounds`), the client trainer, the server and the round
  loop (building the data set and the model is not part of it: their cost is the data's, not the population's);
* ``set-up peak memory``: the peak of Python-visible allocations during a second, identical set-up
  (``tracemalloc``, which numpy reports its arrays to), above what was allocated before it; and the process's peak
  RSS above its RSS before the set-up (``ru_maxrss``, which also holds the data set);
* ``round``: the median of :meth:`RoundLoop.run_round`'s wall time over rounds 2..R (selection, the 10 clients'
  local training, aggregation; no evaluation, no checkpoint), and the first round's separately (it builds the
  period's selection state). A device selected before reuses the data module and loader built in its first fit
  (``ClientTrainer.data_of``), which happens more often in a small population (``devices reselected``), so the
  same number of *cold* rounds follows, each after clearing those caches: every device's data module is then
  built in its fit at every population size, and what remains of a difference is the population's own cost.

The sizes are taken in turn ``--repeats`` times (1k, 100k, 1M, 1k, ...), each in its own subprocess.

Usage: ``python -m experiments.federated.population [--devices 1000 100000 1000000] [--rounds 41]
[--repeats 3] [--write-readme]``; ``--selection-cost`` times only one round's selection, with and without the
reused selection state; ``--one N`` runs one size in this process and prints its JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.federated.readme import write_readme_block
from experiments.federated.run_grid import make_trainer_factory
from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.federation.client import ClientTrainer
from trustml.federation.flat_state import FlatLayout, get_flat
from trustml.federation.options import FederationConfig
from trustml.federation.participation import planned_rounds
from trustml.federation.population import ClientPopulation
from trustml.federation.rounds import RoundLoop
from trustml.federation.server import FederatedServer
from trustml.federation.server_optim import FedAvgServer
from trustml.federation.simulation import InProcessClients
from trustml.federation.strategies import calibrated_privacy, warn_about_population, write_partition
from trustml.methods.erm import ERM, ERMConfig

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- population:begin -->", "<!-- population:end -->"
DEVICE_COUNTS = (1_000, 100_000, 1_000_000)
ROWS_PER_DEVICE, FEATURES, CLASSES = 2, 16, 10


@dataclass
class SyntheticDevicesConfig(DataOptions):
    """``rows`` training rows of the synthetic Gaussian-class data (module doc)."""

    rows: int = 2000


class SyntheticDevices(TrustDataModule):
    """``x = mu_y + N(0, I)`` with 10 class means ``mu_c ~ N(0, I)`` in 16 dimensions (seed 0); 1,000 test rows."""

    input_kind = "features"
    config: SyntheticDevicesConfig

    def load_splits(self) -> dict[str, Split]:
        rng = np.random.default_rng(0)
        means = rng.standard_normal((CLASSES, FEATURES)).astype(np.float32)
        self.label_names = [str(c) for c in range(CLASSES)]
        splits = {}
        for name, rows in (("train", self.config.rows), ("val", 1000), ("test", 1000)):
            y = rng.integers(0, CLASSES, rows)
            x = means[y] + rng.standard_normal((rows, FEATURES), dtype=np.float32)
            splits[name] = Split(inputs=torch.from_numpy(x), labels=torch.from_numpy(y), index=torch.arange(rows))
        return splits


def rss_mib() -> float:
    """This process's resident set size now (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def set_up(
    datamodule: TrustDataModule, method: ERM, options: FederationConfig, root: Path
) -> tuple[RoundLoop, ClientPopulation]:
    """Everything FedAvg.run builds before its first round (module doc), for the in-process simulation."""
    population = ClientPopulation.from_datamodule(datamodule, options.partition)
    write_partition(root, population)
    warn_about_population(population, options.selection)
    final_sizes = population.sizes(population.num_periods - 1)
    planned = planned_rounds(final_sizes, options.rounds, options.selection.clients_per_round, "uniform")
    trainer = ClientTrainer(method, datamodule, make_trainer_factory(root), options.client, planned_fits=planned)
    privacy = calibrated_privacy(options.privacy, options.rounds, options.selection.clients_per_round, final_sizes)
    layout = FlatLayout.of(method.model)
    server = FederatedServer(
        get_flat(method.model, layout),
        FedAvgServer(),
        selection=options.selection,
        server=options.server,
        privacy=privacy,
        seed=0,
    )
    loop = RoundLoop(
        server=server,
        rounds=options.rounds,
        num_periods=population.num_periods,
        sizes_at=population.sizes,
        transport=InProcessClients(trainer, population),
        evaluate=lambda weights: {},
        eval_every=options.rounds + 1,
        state_dir=root,
        fingerprint={},
    )
    return loop, population


def measure_one(devices: int, rounds: int) -> dict[str, Any]:
    """Set-up time and memory and round times for ``devices`` registered devices (module doc), in this process."""
    from trustml.models.mlp import MLP, MLPConfig

    torch.set_num_threads(1)
    datamodule = SyntheticDevices(SyntheticDevicesConfig(rows=ROWS_PER_DEVICE * devices, batch_size=16))
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden_sizes=[64], dropout=0.0), num_classes=CLASSES, input_dim=FEATURES)
    method = ERM(ERMConfig(), model=model, optimizer=partial(torch.optim.SGD, lr=0.1), num_classes=CLASSES)
    options = FederationConfig(
        rounds=2 * rounds,
        partition={"kind": "iid", "num_clients": devices},
        selection={"clients_per_round": 10},
        server={"seed": 0},
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gc.collect()
        rss_before = rss_mib()
        # memory pass: the same set-up under tracemalloc (slower, so not timed), then dropped
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        loop, population = set_up(datamodule, method, options, root)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        files = {name: (root / name).stat().st_size for name in ("partition.json", "partition.npz")}
        del loop, population
        gc.collect()
        # timed pass
        start = time.perf_counter()
        loop, population = set_up(datamodule, method, options, root)
        setup_s = time.perf_counter() - start
        round_s = [loop.run_round(index)["round_s"] for index in range(rounds)]
        trainer = loop.transport.trainer
        distinct = len(trainer.client_data)  # devices selected at least once (each keeps its data module)
        cold_s = []
        for index in range(rounds, 2 * rounds):
            trainer.client_data.clear()  # every selected device's data module and loader built in its fit
            cold_s.append(loop.run_round(index)["round_s"])
    return {
        "devices": devices,
        "train_rows": ROWS_PER_DEVICE * devices,
        "setup_s": setup_s,
        "setup_peak_traced_mib": (peak - base) / 2**20,
        "setup_retained_traced_mib": (current - base) / 2**20,
        "rss_before_setup_mib": rss_before,
        "peak_rss_above_before_mib": peak_rss - rss_before,
        "partition_json_bytes": files["partition.json"],
        "partition_npz_bytes": files["partition.npz"],
        "first_round_ms": 1000 * round_s[0],
        "round_ms": 1000 * float(np.median(round_s[1:])),
        "round_ms_q25_q75": [1000 * float(q) for q in np.quantile(round_s[1:], [0.25, 0.75])],
        "reselected_share": 1.0 - distinct / (10 * rounds),
        "cold_round_ms": 1000 * float(np.median(cold_s)),
        "cold_round_ms_q25_q75": [1000 * float(q) for q in np.quantile(cold_s, [0.25, 0.75])],
        "rounds": rounds,
    }


def selection_cost(devices: int, repeats: int = 30) -> dict[str, float]:
    """Median ms of one round's selection among ``devices`` devices of 2 rows each: as before (a copy of the sizes
    and :func:`select_clients` deriving the devices with data from scratch, every round) and as now
    (:meth:`FederatedServer.select` on the population's read-only sizes array, its :class:`Eligibility` reused)."""
    from trustml.federation.options import PrivacyConfig, SelectionConfig, ServerConfig
    from trustml.federation.selection import select_clients

    sizes = np.full(devices, ROWS_PER_DEVICE, dtype=np.int64)
    sizes.flags.writeable = False
    rng = np.random.default_rng(0)
    server = FederatedServer(
        torch.zeros(3),
        FedAvgServer(),
        selection=SelectionConfig(clients_per_round=10),
        server=ServerConfig(),
        privacy=PrivacyConfig(),
        seed=0,
    )
    before, now = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        select_clients(sizes.copy(), 10, "uniform", rng)
        before.append(time.perf_counter() - start)
        start = time.perf_counter()
        server.select(sizes)
        now.append(time.perf_counter() - start)
    return {
        "devices": devices,
        "copy_and_select_ms": 1000 * float(np.median(before)),
        "cached_select_ms": 1000 * float(np.median(now[1:])),
        "first_select_ms": 1000 * now[0],
    }


def measure(device_counts: list[int], rounds: int, repeats: int) -> dict[str, Any]:
    """:func:`measure_one` for each size in a fresh subprocess, the sizes taken in turn ``repeats`` times (so a
    change of the machine's load hits every size alike); per size the median over repeats of each number; the load
    average before and after."""
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": list(os.getloadavg()),
        "sizes": [],
    }
    runs: dict[int, list[dict[str, Any]]] = {devices: [] for devices in device_counts}
    for _ in range(repeats):
        for devices in device_counts:
            out = subprocess.run(
                [sys.executable, "-m", "experiments.federated.population", "--one", str(devices)]
                + ["--rounds", str(rounds)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            ).stdout
            runs[devices].append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(runs[devices][-1]), flush=True)
    for measured in runs.values():
        merged = {
            k: (float(np.median([m[k] for m in measured])) if isinstance(v, float) else v)
            for k, v in measured[0].items()
        }
        merged["round_ms_per_repeat"] = [m["round_ms"] for m in measured]
        merged["cold_round_ms_per_repeat"] = [m["cold_round_ms"] for m in measured]
        results["sizes"].append(merged)
    results["repeats"] = repeats
    results["load_after"] = list(os.getloadavg())
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown table of :func:`measure`'s numbers, with the targets of issue 20 item 5."""
    sizes = results["sizes"]
    first, last = sizes[0], sizes[-1]
    lines = [
        f"Machine: {results['machine']}, 1 torch thread; load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in results['load_before'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in results['load_after'])} after (shared with other jobs).",
        "",
        "| devices | train rows | set-up (s) | set-up peak, traced (MiB) | peak RSS above pre-set-up (MiB) "
        "| partition.json | partition.npz | first round (ms) | round (ms), per repeat | devices reselected "
        "| cold round (ms), per repeat |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sizes:
        warm = ", ".join(f"{x:.1f}" for x in s["round_ms_per_repeat"])
        cold = ", ".join(f"{x:.1f}" for x in s["cold_round_ms_per_repeat"])
        lines.append(
            f"| {s['devices']:,} | {s['train_rows']:,} | {s['setup_s']:.2f} | {s['setup_peak_traced_mib']:.1f} | "
            f"{s['peak_rss_above_before_mib']:.0f} | {s['partition_json_bytes'] / 1024:.1f} KiB | "
            f"{s['partition_npz_bytes'] / 2**20:.1f} MiB | {s['first_round_ms']:.1f} | "
            f"{s['round_ms']:.1f} ({warm}) | {100 * s['reselected_share']:.0f}% | {s['cold_round_ms']:.1f} ({cold}) |"
        )
    ratio = last["round_ms"] / first["round_ms"]
    cold_ratio = last["cold_round_ms"] / first["cold_round_ms"]
    memory = last["setup_peak_traced_mib"] - first["setup_peak_traced_mib"]
    lines += [
        "",
        f"Targets ({last['devices']:,} vs {first['devices']:,} devices; rounds of 10 devices; medians over "
        f"{first['rounds'] - 1} rounds, then over {results['repeats']} repeats):",
        "",
        f"- round time ratio {ratio:.2f} (target <= 1.2): **{'met' if ratio <= 1.2 else 'not met'}**; with every "
        f"device's data module built in its fit at both sizes (cold rounds) {cold_ratio:.2f};",
        f"- set-up {last['setup_s']:.2f} s (target <= 10 s): **{'met' if last['setup_s'] <= 10 else 'not met'}**;",
        f"- set-up peak memory {memory:.0f} MiB above the {first['devices']:,}-device run (target <= 500 MiB): "
        f"**{'met' if memory <= 500 else 'not met'}**.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=list(DEVICE_COUNTS))
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", type=int, default=None, help="measure one population size in this process")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--selection-cost", action="store_true", help="only time one round's selection per size")
    args = parser.parse_args()
    if args.selection_cost:
        for devices in args.devices:
            print(json.dumps(selection_cost(devices)))
        return
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.rounds)))
        return
    results = measure(args.devices, args.rounds, args.repeats)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "population.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    print(text)
    if args.write_readme:
        write_readme_block(text, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
