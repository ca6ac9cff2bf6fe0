"""Compare the ``fairness/...`` results a training run's ``callbacks=fairness`` wrote with those of
``trustml-fairness run_dir=<that run>`` (the same measurement, re-run on the rebuilt test split).

    .venv/bin/python experiments/fairness/compare_app_callback.py TRAIN_RUN_DIR APP_RUN_DIR

Prints a Markdown table (key, callback, app, |difference|) and the largest relative difference of the numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    train, app = (json.loads((Path(d) / "results.json").read_text()) for d in argv[:2])
    keys = sorted(k for k in train if k.startswith("fairness/"))
    missing = sorted(set(keys) ^ {k for k in app if k.startswith("fairness/")})
    print("| key | callback (training run) | trustml-fairness run_dir | abs. difference |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    for key in keys:
        a, b = train[key], app.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            diff = abs(a - b)
            worst = max(worst, diff / max(abs(a), 1e-12))
            print(f"| {key} | {a:.6g} | {b:.6g} | {diff:.2g} |")
        else:
            print(f"| {key} | {a} | {b} | {'same' if a == b else 'DIFFERENT'} |")
    print(f"\nkeys in only one of them: {missing or 'none'}; largest relative difference of the numbers: {worst:.2g}")


if __name__ == "__main__":
    main(sys.argv[1:])
