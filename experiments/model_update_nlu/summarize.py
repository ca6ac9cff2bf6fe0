"""Tables of the MASSIVE add-data update from ``logs/seed*/``: mean and std over seeds.

Each seed's rows are also written to ``results/seed<S>.json`` (committed: the run folders hold checkpoints and
stay out of git), and a seed whose ``logs/seed<S>/`` is absent is read from there, so the table can be rebuilt
on a fresh clone.

Rows: the old model, the untreated update (alpha 0 of the plain BCWI run), BCWI plain and Fisher at the
dev-chosen alpha, each distillation arm (``fd_kl``, ``fd_lm``, ``ldi``: the trained model, and BCWI on top of it at
its dev-chosen alpha) and the old/new ensemble reference (``ensemble.json`` from ``ensemble.py``). Verdict per
row: NFR <= 50% of the untreated update's and error <= +0.5 points, both against the untreated update of the
same seeds. Usage: ``.venv/bin/python experiments/model_update_nlu/summarize.py [LOG_DIR]``
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = {"fd_kl": "FD-KL", "fd_lm": "FD-LM", "ldi": "LDI"}
REFERENCE_ROWS = ("old", "new (untreated)")


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def seed_rows(seed_dir: Path) -> dict[str, tuple[float, float, float | None]]:
    """``row name -> (ER %, NFR %, chosen alpha or None)`` of one seed (empty if its plain BCWI run is missing)."""
    plain = seed_dir / "bcwi_plain" / "results.json"
    if not plain.is_file():
        return {}
    r = json.loads(plain.read_text())
    rows = {
        "old": (100 * r["test/er_old"], 0.0, None),
        "new (untreated)": (100 * (1 - r["test/new_acc"]), 100 * r["test/new_nfr"], None),
        "BCWI plain": (100 * r["test/er_new"], 100 * r["test/nfr"], r["test/bcwi_alpha"]),
    }
    fisher = seed_dir / "bcwi_fisher" / "results.json"
    if fisher.is_file():
        f = json.loads(fisher.read_text())
        rows["BCWI Fisher"] = (100 * f["test/er_new"], 100 * f["test/nfr"], f["test/bcwi_alpha"])
    for arm, label in ARMS.items():
        path = seed_dir / arm / "results.json"
        if path.is_file():
            a = json.loads(path.read_text())
            rows[label] = (100 * (1 - a["test/new_acc"]), 100 * a["test/new_nfr"], None)
            rows[f"{label} + BCWI plain"] = (100 * a["test/er_new"], 100 * a["test/nfr"], a["test/bcwi_alpha"])
    ensemble = seed_dir / "ensemble.json"
    if ensemble.is_file():
        e = json.loads(ensemble.read_text())
        rows["old/new ensemble (2 models)"] = (100 * e["test/er_ensemble"], 100 * e["test/nfr_ensemble"], None)
    return rows


def collect(log_dir: Path, results_dir: Path) -> dict[str, dict[str, tuple[float, float, float | None]]]:
    """Per-seed rows from the run folders (saved to ``results_dir``), then from ``results_dir`` for the rest."""
    per_seed: dict[str, dict[str, tuple[float, float, float | None]]] = {}
    for seed_dir in sorted(log_dir.glob("seed*")):
        rows = seed_rows(seed_dir)
        if rows:
            per_seed[seed_dir.name] = rows
            results_dir.mkdir(parents=True, exist_ok=True)
            (results_dir / f"{seed_dir.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    for saved in sorted(results_dir.glob("seed*.json")):
        if saved.stem not in per_seed:
            per_seed[saved.stem] = {name: tuple(row) for name, row in json.loads(saved.read_text()).items()}
    return dict(sorted(per_seed.items(), key=lambda item: int(item[0].removeprefix("seed"))))


def main(log_dir: Path, results_dir: Path = HERE / "results") -> None:
    per_seed = collect(log_dir, results_dir)
    names: list[str] = []
    for rows in per_seed.values():
        names += [n for n in rows if n not in names]
    print(f"Seeds: {', '.join(per_seed)} ({len(per_seed)}); test split, 4,000 utterances; % mean ± std over seeds.\n")
    print("| model | seeds | ER % | NFR % | NFR vs untreated | ER vs untreated | chosen alphas | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        seeds = [s for s, rows in per_seed.items() if name in rows]
        er = [per_seed[s][name][0] for s in seeds]
        nfr = [per_seed[s][name][1] for s in seeds]
        alphas = [per_seed[s][name][2] for s in seeds if per_seed[s][name][2] is not None]
        ratio = delta = verdict = ""
        if name not in REFERENCE_ROWS:
            base_er = statistics.mean(per_seed[s]["new (untreated)"][0] for s in seeds)
            base_nfr = statistics.mean(per_seed[s]["new (untreated)"][1] for s in seeds)
            ratio = f"{100 * (statistics.mean(nfr) / base_nfr - 1):+.0f}%"
            delta = f"{statistics.mean(er) - base_er:+.2f} points"
            met = statistics.mean(nfr) <= 0.5 * base_nfr and statistics.mean(er) <= base_er + 0.5
            verdict = "met" if met else "not met"
        print(
            f"| {name} | {', '.join(s.removeprefix('seed') for s in seeds)} | {mean_std(er)} | {mean_std(nfr)} | "
            f"{ratio} | {delta} | {', '.join(f'{a:g}' for a in alphas)} | {verdict} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "logs")
