"""Privacy-utility of the two kinds of DP in a federation, on digits with 100 devices.

* **example-level** (``optimizer=dp_sgd`` under ``federation=fedavg``): every device runs DP-SGD on its own
  ~11 samples and accounts its own epsilon over the rounds it takes part in; its noise is calibrated so that
  ``optimizer.target_epsilon`` lasts the 95% quantile of the number of rounds it is selected in
  (``trustml.federation.participation``); a spent device is selected no more.
* **client-level** (DP-FedAvg, ``federation.privacy.target_epsilon`` with ``federation.selection.scheme=poisson``):
  each round's updates are clipped to ``federation.privacy.clip_norm`` and the server adds Gaussian noise to their
  sum, calibrated so that all rounds spend the target epsilon at ``federation.privacy.delta``.

Every arm uses the same settings, fixed before any run (no tuning on test numbers): MLP 64-32-10 without
dropout, 100 IID devices, 10 per round (expected), 40 rounds, 1 local epoch, batch 4 (Poisson-sampled under
DP-SGD), SGD lr 0.5; DP-FedAvg clips updates to 0.5. epsilon = inf is the same pipeline without noise (plain
FedAvg; for client-level: Poisson selection and clipping without noise). 3 seeds (seed also draws the
partition's training order; the partition itself is fixed). Runs go through the ``trustml`` CLI (multirun
sweeps under ``--log-dir``); the table is written into README.md between the ``dp-utility`` markers.

Usage (from the repository root): ``python -m experiments.federated.dp_utility [--write-readme]``
(``--summarize-only`` re-reads the runs; ``--arms client/dp client/none`` re-runs some arms).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from experiments.federated.readme import write_readme_block

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
EPSILONS = ("1", "3", "8")
SEEDS = "0,1,2"
COMMON = [
    "data=digits",
    "model.hidden_sizes=[32]",
    "model.dropout=0.0",
    "method=erm",
    "federation=fedavg",
    "federation.partition.num_clients=100",
    "federation.selection.clients_per_round=10",
    "federation.rounds=40",
    "federation.client.local_epochs=1",
    "federation.server.eval_every=40",
    "data.batch_size=4",
    "optimizer.lr=0.5",
    "trainer.enable_progress_bar=false",
    "print_results=false",
    "logger=csv",
    f"seed={SEEDS}",
]
ARMS: dict[str, list[str]] = {
    "example/dp": ["optimizer=dp_sgd", f"optimizer.target_epsilon={','.join(EPSILONS)}"],
    "example/none": ["optimizer=sgd"],
    "client/dp": [
        "optimizer=sgd",
        "federation.selection.scheme=poisson",
        "federation.privacy.clip_norm=0.5",
        f"federation.privacy.target_epsilon={','.join(EPSILONS)}",
    ],
    "client/none": ["optimizer=sgd", "federation.selection.scheme=poisson", "federation.privacy.clip_norm=0.5"],
}


def run_arms(log_dir: Path, arms: list[str]) -> None:
    """One ``trustml -m`` sweep per arm."""
    for arm in arms:
        overrides = ARMS[arm]
        sweep = log_dir / arm
        command = [str(BIN / "trustml"), "-m", *COMMON, *overrides, f"hydra.sweep.dir={sweep}"]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def _override(overrides: list[str], key: str) -> str | None:
    for item in overrides:
        if item.startswith(key + "="):
            return item.split("=", 1)[1]
    return None


def collect(log_dir: Path) -> list[dict]:
    """One row per (kind, target epsilon): test accuracy mean/std over seeds and the epsilon actually spent."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for results_file in sorted(log_dir.glob("*/*/*/results.json")):
        run_dir = results_file.parent
        kind = run_dir.parent.parent.name
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
        overrides = [line.lstrip("- ").strip() for line in overrides]
        # sweeps recorded before the federation options were nested name federation.dp_target_epsilon
        target = (
            _override(overrides, "optimizer.target_epsilon")
            or _override(overrides, "federation.privacy.target_epsilon")
            or _override(overrides, "federation.dp_target_epsilon")
        )
        groups.setdefault((kind, target or "inf"), []).append(json.loads(results_file.read_text()))
    rows = []
    for (kind, target), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], float(kv[0][1]))):
        accuracy = [100 * r["test/acc"] for r in runs]
        spent_key = "federation/client_epsilon_max" if kind == "example" else "federation/dp_epsilon"
        spent = [r[spent_key] for r in runs if spent_key in r]
        rows.append(
            {
                "kind": kind,
                "target": target,
                "seeds": len(runs),
                "acc_mean": statistics.fmean(accuracy),
                "acc_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                "spent": max(spent) if spent else math.inf,
                "retired": statistics.fmean(  # federation/devices_budget_spent: results recorded before the rename
                    r.get("federation/clients_budget_spent", r.get("federation/devices_budget_spent", 0.0))
                    for r in runs
                ),
                "rounds": statistics.fmean(r["federation/aggregated_rounds"] for r in runs),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """The README table."""
    names = {"example": "example-level (DP-SGD on each device)", "client": "client-level (DP-FedAvg)"}
    lines = [
        "| DP kind | target epsilon | epsilon spent (max) | test acc % (mean ± std) | devices spent | "
        "aggregated rounds | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        spent = "inf" if math.isinf(r["spent"]) else f"{r['spent']:.2f}"
        lines.append(
            f"| {names[r['kind']]} | {r['target']} | {spent} | {r['acc_mean']:.1f} ± {r['acc_std']:.1f} | "
            f"{r['retired']:.0f} | {r['rounds']:.1f} | {r['seeds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", type=Path, default=HERE / "logs" / "dp_utility")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS), help="arms to (re)run")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        run_arms(args.log_dir, args.arms)
    text = table(collect(args.log_dir))
    print(text)
    if args.write_readme:
        write_readme_block(text, "<!-- dp-utility:begin -->", "<!-- dp-utility:end -->")


if __name__ == "__main__":
    main()
