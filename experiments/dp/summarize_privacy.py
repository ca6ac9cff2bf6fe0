"""Tables of the privacy-utility sweeps, the membership-inference audits and the canary audits of ``run_privacy.sh``.

Usage: ``python experiments/dp/summarize_privacy.py LOG_DIR [--write-readme]``. For every privacy level the
learning rate with the best mean validation accuracy is chosen, and the test accuracy of its seeds reported
(mean +- std). The audit tables report the test accuracy of the checkpoint that was attacked (``test_acc`` of
``audit.json`` / ``canary.json``, recomputed by ``trustml-audit``), not the run's ``results.json`` (the best
checkpoint's). Each table sits between its own README markers (``<!-- privacy-<section>:start/end -->``);
``--write-readme`` rewrites the tables whose runs are present and leaves the others as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd

README = Path(__file__).with_name("README.md")
DATASETS = {"digits": "digits (MLP 256-128)", "topical_chat": "Topical-Chat sentiment (frozen MiniLM + MLP head)"}
AUDIT_SETTINGS = {"nonprivate": "non-private (Adam)", "dp_eps8": "DP-SGD, epsilon 8", "dp_eps1": "DP-SGD, epsilon 1"}
CANARY_SETTINGS = {"nonprivate": "non-private (AdamW)", "dp_eps8": "DP-Adam, epsilon 8"}


def _mean_std(values: pd.Series, scale: float = 100.0) -> str:
    values = values.dropna() * scale
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def best_learning_rate(sweep: pd.DataFrame) -> pd.DataFrame:
    """Rows of the learning rate with the highest mean validation accuracy."""
    done = sweep[sweep["status"] == "completed"]
    best = done.groupby("optimizer.lr")["val/acc_best"].mean().idxmax()
    return done[done["optimizer.lr"] == best]


def utility_table(log: Path) -> str | None:
    """Test accuracy vs epsilon per data set (best learning rate per privacy level)."""
    rows = []
    for name, title in DATASETS.items():
        dp, plain = log / "utility" / name / "dp" / "summary.csv", log / "utility" / name / "nonprivate" / "summary.csv"
        if not (dp.is_file() and plain.is_file()):
            continue
        sweep = pd.read_csv(dp)
        for target, runs in sweep.groupby("optimizer.target_epsilon"):
            chosen = best_learning_rate(runs)
            rows.append(
                f"| {title} | {target:g} | {chosen['epsilon'].mean():.2f} | {chosen['noise_multiplier'].mean():.2f} "
                f"| {chosen['optimizer.lr'].iloc[0]:g} | {_mean_std(chosen['test/acc'])} | {len(chosen)} |"
            )
        chosen = best_learning_rate(pd.read_csv(plain))
        rows.append(
            f"| {title} | inf | inf | 0 | {chosen['optimizer.lr'].iloc[0]:g} | {_mean_std(chosen['test/acc'])} "
            f"| {len(chosen)} |"
        )
    return markdown_table(
        "| data / model | target epsilon | epsilon spent | noise multiplier | lr (best on val) | test acc % | seeds |\n"
        "|---|---:|---:|---:|---:|---:|---:|",
        rows,
    )


def markdown_table(head: str, rows: list[str]) -> str | None:
    """``head`` (header and rule lines) followed by ``rows``; ``None`` when there are no rows."""
    return "\n".join([head, *rows]) if rows else None


def _results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def attacked_accuracy(audit: dict) -> str:
    """The attacked checkpoint's test accuracy in % from an ``audit.json``/``canary.json`` ("n/a" if it has none).

    Outputs of a ``trustml-audit`` older than that value are not completed from ``results.json``: that holds the
    best checkpoint's accuracy, which is not the attacked model's when ``--checkpoint last`` was audited.
    """
    value = audit.get("test_acc")
    return "n/a" if value is None else f"{100 * value:.1f}"


def attacked_epoch(audit: dict) -> str:
    """``E / N``: the attacked weights are from epoch ``E`` of ``N`` (1-based), "n/a" when the audit did not say."""
    epoch, last = audit.get("checkpoint_epoch"), audit.get("run_last_epoch")
    if epoch is None:
        return "n/a"
    return f"{epoch + 1}" if last is None else f"{epoch + 1} / {last + 1}"


def audit_table(log: Path) -> str | None:
    """Membership-inference AUC and TPR at low FPR per training setting, with the attacked checkpoint's accuracy."""
    rows = []
    for setting, title in AUDIT_SETTINGS.items():
        path = log / "audit" / setting / "result" / "audit.json"
        if not path.is_file():
            continue
        audit = json.loads(path.read_text())
        results = _results(log / "audit" / setting / "target")
        epsilon = results.get("epsilon", math.inf)
        for attack, metrics in audit["attacks"].items():
            rows.append(
                f"| {title} | {epsilon:.2f} | {attacked_epoch(audit)} | {attacked_accuracy(audit)} | {attack} "
                f"| {metrics['auc']:.3f} | {100 * metrics['tpr@1%fpr']:.2f} | {100 * metrics['tpr@0.1%fpr']:.2f} "
                f"| {metrics['num_candidates']} |"
            )
    return markdown_table(
        "| target training | epsilon | attacked epoch | test acc % (attacked checkpoint) | attack | ROC AUC "
        "| TPR@1%FPR % | TPR@0.1%FPR % | candidates |\n"
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
        rows,
    )


def canary_table(log: Path) -> str | None:
    """Rank and exposure of the inserted canary per training setting and repetition count."""
    rows = []
    for setting, title in CANARY_SETTINGS.items():
        runs = sorted(
            (log / "canary" / setting).glob("reps*/canary.json"), key=lambda p: int(re.sub(r"\D", "", p.parent.name))
        )
        for path in runs:
            canary = json.loads(path.read_text())
            results = _results(path.parent / "train")
            rows.append(
                f"| {title} | {canary['repetitions']} | {results.get('epsilon', math.inf):.2f} "
                f"| {attacked_epoch(canary)} | {attacked_accuracy(canary)} "
                f"| {canary['rank']} / {canary['num_candidates']} "
                f"| {canary['exposure']:.2f} | {'yes' if canary['ranks_first'] else 'no'} |"
            )
    return markdown_table(
        "| training | canary repetitions | epsilon | ranked epoch | test acc % (ranked checkpoint) | secret's rank "
        "| exposure (bits) | ranks first |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|",
        rows,
    )


SECTIONS = {
    "utility": ("Privacy-utility", utility_table),
    "audit": ("Membership inference (overfit digits MLP, 8 shadow runs)", audit_table),
    "canary": ("Canary exposure (Topical-Chat turns, small BERT from scratch, 3-digit secret)", canary_table),
}


def markers(section: str) -> tuple[str, str]:
    """The README markers around ``section``'s block (one pair per section, so a partial run keeps the others)."""
    return f"<!-- privacy-{section}:start -->", f"<!-- privacy-{section}:end -->"


def tables(log: Path) -> dict[str, str]:
    """Each section whose runs are present under ``log``: its heading and table, as markdown."""
    found = {name: (title, table(log)) for name, (title, table) in SECTIONS.items()}
    return {name: f"### {title}\n\n{table}" for name, (title, table) in found.items() if table is not None}


def write_readme(blocks: dict[str, str], readme: Path = README) -> None:
    """Replace each given section's block between its markers (appending it when absent); others stay as they are.

    ``run_privacy.sh audit`` thus rewrites the membership-inference table only, and never drops the tables of
    sections whose runs are not in this log directory.
    """
    content = readme.read_text()
    for section, text in blocks.items():
        start, end = markers(section)
        block = f"{start}\n{text}\n{end}"
        if start in content:
            content = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _, b=block: b, content, flags=re.S)
        else:
            content = content.rstrip() + "\n\n" + block + "\n"
    readme.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("log", type=Path)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    blocks = tables(args.log)
    print("\n\n".join(blocks.values()))
    if args.write_readme:
        write_readme(blocks)


if __name__ == "__main__":
    main()
