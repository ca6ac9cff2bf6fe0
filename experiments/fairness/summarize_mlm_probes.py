"""Tabulate the MLM-head probes of run_mlm_probes.sh: CrowS-Pairs per encoder and the probe's held-out fit.

    .venv/bin/python experiments/fairness/summarize_mlm_probes.py   # markdown; logs/mlm_head_runs/summary.json

For each probe ``logs/mlm_head_runs/<name>/metrics.json`` (held-out masked-token perplexity of the head and of the
unigram baseline) and ``logs/mlm_head_runs/<name>_crows/results.json`` (``crows_pairs/metric`` = 100 x the share of
pairs whose more stereotyping sentence has the higher pseudo-log-likelihood, Nangia et al. 2020). The 95% interval of
the CrowS-Pairs score is the Wilson score interval of that share over the scored pairs (pairs treated as independent
Bernoulli draws; the sampling of the pairs, not the training of the probe, is what it covers).

Intrinsic vs extrinsic: the 12 classifiers of the study (``logs/study2/summary.json`` points: name, CES, flip rate,
APS); a ``<task>_frozen_s<k>`` classifier's encoder is the offline MiniLM, so it gets the offline probe's score, and
``<task>_s<k>`` gets the score of the probe of its own encoder. Spearman rho with a bootstrap interval over the
classifiers (``run_study.spearman_with_bootstrap``), as for CES, with the same caveats (ties, non-independent models).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_study import spearman_with_bootstrap  # noqa: E402

LOGS = HERE / "logs" / "mlm_head_runs"
NAMES = ["offline_minilm"] + [f"{t}_s{s}" for t in ("topical_chat", "massive") for s in range(3)]


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n, in percent."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


def main() -> None:
    rows, scores = [], {}
    for name in NAMES:
        metrics_path, crows_path = LOGS / name / "metrics.json", LOGS / f"{name}_crows" / "results.json"
        if not (metrics_path.is_file() and crows_path.is_file()):
            rows.append(f"| {name} | not run | | | |")
            continue
        m, c = json.loads(metrics_path.read_text()), json.loads(crows_path.read_text())
        n = int(c["crows_pairs/n_pairs"])
        score = float(c["crows_pairs/metric"])
        low, high = wilson(score / 100 * n, n)
        head, uni = m["heldout_trained_head"], m["heldout_unigram_baseline"]
        beats = head["perplexity"] < uni["perplexity"]
        scores[name] = score
        rows.append(
            f"| {name} | {score:.1f} [{low:.1f}, {high:.1f}] (n={n}) | {head['perplexity']:,.0f} vs "
            f"{uni['perplexity']:,.0f} ({'beats' if beats else 'does NOT beat'} unigram) | "
            f"{head['accuracy']:.3f} vs {uni['accuracy']:.3f} | {c['crows_pairs/gender/metric']:.1f} |"
        )
    print(
        "| encoder | CrowS-Pairs [95% Wilson] | held-out perplexity head vs unigram | top-1 head vs unigram "
        "| gender pairs (n=27) |"
    )
    print("|---|---|---|---|---:|")
    print("\n".join(rows))
    summary: dict[str, object] = {"crows_pairs": scores}
    points = json.loads((HERE / "logs" / "study2" / "summary.json").read_text())["points"]
    used, xs, flips, apss = [], [], [], []
    for name, _ces, flip, aps in points:
        probe = "offline_minilm" if "_frozen_" in name else name
        if probe in scores:
            used.append(name)
            xs.append(scores[probe])
            flips.append(flip)
            apss.append(aps)
    if len(xs) >= 4:
        corr = {
            "flip_rate": spearman_with_bootstrap(xs, flips, 2000),
            "aps": spearman_with_bootstrap(xs, apss, 2000),
        }
        fine = [i for i, name in enumerate(used) if "_frozen_" not in name]
        if len(fine) >= 4:
            fx = [xs[i] for i in fine]
            corr["flip_rate_finetuned_only"] = spearman_with_bootstrap(fx, [flips[i] for i in fine], 2000)
            corr["aps_finetuned_only"] = spearman_with_bootstrap(fx, [apss[i] for i in fine], 2000)
        summary["n_classifiers"] = len(xs)
        summary["correlations"] = corr
        print(f"\nSpearman over {len(xs)} classifiers (CrowS-Pairs of the encoder's probe vs extrinsic):")
        for key, v in corr.items():
            print(f"| {key} | {v['rho']:.3f} | {v['p']:.3f} | [{v['ci_low']:.2f}, {v['ci_high']:.2f}] |")
    (LOGS / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
