"""The paper's warning, checked: CEAT (WEAT 6-8) on the hidden states of the teacher and of every student.

Gupta et al. (2022) found that less gender disparity in what a distilled LM generates did not mean fairer
representations. For each finished run of ``run_experiment.py`` (``logs/study/teacher`` and
``logs/study/<arm>_seed<S>``) this calls ``trustml-fairness run_dir=<run>`` (CEAT on the causal LM's left-context
hidden states, :class:`trustml.fairness.ceat.LeftContextEncoder`) with the same context draws for every model
(``ceat.seed=0``), skips runs already scored, and prints the combined effect size (CES) per test and arm, mean +- std
over seeds. Usage: ``.venv/bin/python experiments/role_reversal/representation.py [--draws 1000] [--corpus FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARMS = ("plain", "cda", "rr", "cda_rr")
TESTS = ("weat6", "weat7", "weat8")


def score(run_dir: Path, out: Path, draws: int, corpus: str) -> dict[str, float]:
    """CEAT results of one run (``out/results.json``; computed unless present)."""
    results = out / "results.json"
    if not results.is_file():
        command = [
            str(Path(sys.executable).parent / "trustml-fairness"),
            f"run_dir={run_dir}",
            f"ceat.n_draws={draws}",
            "ceat.seed=0",
            f"ceat.corpus={corpus}",
            "crows_pairs.enabled=false",
            "print_results=false",
            f"hydra.run.dir={out}",
        ]
        subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=sys.stderr)
    return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, default=HERE / "logs" / "study")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--corpus", default="../shared/data/topical_chat/conversations_test_freq.json")
    args = parser.parse_args()
    runs = {"teacher": [args.study / "teacher"]}
    for arm in ARMS:
        runs[arm] = sorted(p for p in args.study.glob(f"{arm}_seed[0-9]") if (p / "results.json").is_file())
    print(f"CEAT, {args.draws} draws, contexts from {args.corpus}; CES mean +- std over seeds\n")
    print("| model | runs | " + " | ".join(f"CES {t}" for t in TESTS) + " |")
    print("|---|---|" + "---|" * len(TESTS))
    for arm, dirs in runs.items():
        scored = [score(d, args.study / "ceat" / d.name, args.draws, args.corpus) for d in dirs]
        cells = []
        for test in TESTS:
            values = [r[f"ceat/{test}/ces"] for r in scored]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} +- {std:.3f}")
        print(f"| {arm} | {len(dirs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
