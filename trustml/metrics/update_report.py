"""The report of one model update: error and flip metrics of each variant of the new model, per-class flips, a plot.

For an old model and several variants of the new one (the untreated update, interpolated or distilled
variants, ...) evaluated on the same samples, :func:`update_report` tabulates per variant the error rate
``ER``, ``NFR``, relative NFR ``NFR / ((1 - ER_old) ER_new)``, ``NFI = NFR / ER_new`` and ``PFR`` (definitions in
:mod:`trustml.metrics.flips`), plus the negative flips per true class. :func:`plot_sweep` draws NFR against
error for a sweep of variants (e.g. BCWI's alpha grid), the trade-off curve of the update.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from trustml.metrics.flips import as_predictions, flip_counts, flip_masks, per_class_counts


@dataclass
class UpdateReport:
    """One row of metrics per variant (``rows``) and negative flips per class and variant (``per_class``)."""

    rows: list[dict[str, Any]]
    per_class: dict[str, dict[str, int]]
    total: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"rows": self.rows, "per_class_negative_flips": self.per_class, "total": self.total, **self.extra}

    def to_markdown(self, top_classes: int = 15) -> str:
        """The variant table and the per-class negative flips of the ``top_classes`` classes with the most."""
        lines = [
            f"Samples: {self.total}. Rates in %; rel. NFR = NFR / ((1 - ER_old) ER_new); NFI = NFR / ER_new.",
            "",
            "| variant | ER % | NFR % | rel. NFR | NFI | PFR % | negative flips |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['variant']} | {100 * row['er']:.2f} | {100 * row['nfr']:.2f} | {row['relative_nfr']:.3f} | "
                f"{row['nfi']:.3f} | {100 * row['pfr']:.2f} | {row['negative_flips']} |"
            )
        variants = [row["variant"] for row in self.rows if row["variant"] != "old"]
        ranked = sorted(self.per_class, key=lambda c: -max(self.per_class[c].get(v, 0) for v in variants))
        ranked = [c for c in ranked if any(self.per_class[c].get(v, 0) for v in variants)][:top_classes]
        if ranked:
            lines += ["", "Negative flips per true class (classes with the most):", ""]
            lines += ["| class | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
            for name in ranked:
                lines.append(f"| {name} | " + " | ".join(str(self.per_class[name].get(v, 0)) for v in variants) + " |")
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path, stem: str = "update_report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.json`` into ``directory``; returns both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        md, js = directory / f"{stem}.md", directory / f"{stem}.json"
        md.write_text(self.to_markdown())
        js.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return md, js


def update_report(
    old: Tensor, variants: Mapping[str, Tensor], target: Tensor, class_names: Sequence[str] | None = None
) -> UpdateReport:
    """Metrics of every ``variants[name]`` (labels or ``[N, C]`` scores) as an update of ``old`` on ``target``.

    The first row is the old model itself (its error; no flips by definition).
    """
    old_pred = as_predictions(old).cpu()
    target = target.cpu()
    num_classes = len(class_names) if class_names is not None else int(target.max()) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    rows: list[dict[str, Any]] = []
    per_class: dict[str, dict[str, int]] = {name: {} for name in names}
    for variant, predictions in {"old": old_pred, **dict(variants)}.items():
        new_pred = as_predictions(predictions).cpu()
        counts = flip_counts(old_pred, new_pred, target)
        rates = counts.rates()
        rows.append(
            {
                "variant": variant,
                "er": rates["er_new"],
                "nfr": rates["nfr"],
                "relative_nfr": rates["relative_nfr"],
                "nfi": rates["nfi"],
                "pfr": rates["pfr"],
                "negative_flips": counts.negative_flips,
            }
        )
        if variant != "old":
            negative, _ = flip_masks(old_pred, new_pred, target)
            for name, count in zip(names, per_class_counts(target, negative, num_classes).tolist(), strict=True):
                per_class[name][variant] = int(count)
    return UpdateReport(rows=rows, per_class=per_class, total=int(target.numel()))


def plot_sweep(
    points: Sequence[tuple[str, float, float]],
    path: str | Path,
    references: Sequence[tuple[str, float, float]] = (),
    title: str = "NFR vs error",
) -> Path:
    """A PNG of NFR (y) against error (x), both in %, for a sweep ``[(label, er, nfr), ...]`` joined by a line,
    with ``references`` (e.g. the old and the untreated new model) as separate marked points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    if points:
        xs = [100 * er for _, er, _ in points]
        ys = [100 * nfr for _, _, nfr in points]
        ax.plot(xs, ys, "o-", color="tab:blue", markersize=4)
        for (label, _, _), x, y in zip(points, xs, ys, strict=True):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for label, er, nfr in references:
        ax.plot([100 * er], [100 * nfr], "s", markersize=7, label=label)
    ax.set_xlabel("error rate (%)")
    ax.set_ylabel("negative flip rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if references:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
