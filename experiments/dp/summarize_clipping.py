"""Automatic vs flat clipping table of experiments/dp/README.md from the sweeps under LOG/clipping/<data>/<clipping>.

For every (data, clipping, target epsilon): the learning rate with the best validation accuracy of the sweep, its
test accuracy, the epsilon spent and the noise multiplier.

Usage: ``python experiments/dp/summarize_clipping.py LOG_DIR/clipping``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf


def rows(log: Path) -> list[dict]:
    """One row per (data, clipping, target epsilon): the best learning rate on validation accuracy."""
    found: dict[tuple[str, str, float], list[dict]] = {}
    for results_path in sorted(log.glob("*/*/*/results.json")):
        run = results_path.parent
        data, clipping = run.parent.parent.name, run.parent.name
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        results = json.loads(results_path.read_text())
        key = (data, clipping, float(cfg.optimizer.target_epsilon))
        found.setdefault(key, []).append({"lr": float(cfg.optimizer.lr), **results})
    table = []
    for (data, clipping, target), runs in sorted(found.items()):
        best = max(runs, key=lambda r: r["val/acc_best"])
        table.append(
            {
                "data": data,
                "clipping": clipping,
                "target": target,
                "lr": best["lr"],
                "lrs": sorted(r["lr"] for r in runs),
                "test_acc": best["test/acc"],
                "epsilon": best.get("epsilon"),
                "sigma": best.get("noise_multiplier"),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    args = parser.parse_args()
    print("| data | clipping | target epsilon | epsilon spent | noise multiplier | lr (best on val of) | test acc % |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in rows(args.log):
        lrs = ", ".join(f"{lr:g}" for lr in r["lrs"])
        print(
            f"| {r['data']} | {r['clipping']} | {r['target']:g} | {r['epsilon']:.2f} | {r['sigma']:.2f} "
            f"| {r['lr']:g} (of {lrs}) | {100 * r['test_acc']:.1f} |"
        )


if __name__ == "__main__":
    main()
