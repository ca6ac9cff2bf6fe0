"""The update report: error and flip metrics per variant, per-class negative flips, the NFR-vs-error plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trustml.metrics.update_report import plot_sweep, update_report


def test_table_of_a_constructed_update(tmp_path: Path) -> None:
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    old = torch.tensor([0, 0, 1, 0, 2, 2, 1, 0, 1, 0])  # 7 right
    new = torch.tensor([0, 1, 1, 1, 2, 0, 2, 0, 1, 2])  # 8 right; flips: sample 1 (class 0), 5 (class 2)
    mixed = torch.tensor([0, 0, 1, 1, 2, 2, 1, 0, 1, 2])  # 9 right, no negative flip
    report = update_report(old, {"new": new, "mixed": mixed}, target, ["a", "b", "c"])
    rows = {row["variant"]: row for row in report.rows}
    assert rows["old"]["er"] == pytest.approx(0.3) and rows["old"]["nfr"] == 0.0
    assert rows["new"]["er"] == pytest.approx(0.2) and rows["new"]["nfr"] == pytest.approx(0.2)
    assert rows["new"]["relative_nfr"] == pytest.approx(0.2 / (0.7 * 0.2))
    assert rows["new"]["nfi"] == pytest.approx(1.0) and rows["new"]["pfr"] == pytest.approx(0.3)
    assert rows["mixed"]["negative_flips"] == 0 and rows["mixed"]["er"] == pytest.approx(0.1)
    assert report.per_class == {"a": {"new": 1, "mixed": 0}, "b": {"new": 0, "mixed": 0}, "c": {"new": 1, "mixed": 0}}
    md, js = report.save(tmp_path)
    assert "| new | 20.00 | 20.00 | 1.429 | 1.000 | 30.00 | 2 |" in md.read_text()
    assert js.is_file()


def test_sweep_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_sweep([("0", 0.1, 0.05), ("0.5", 0.11, 0.02)], tmp_path / "sweep.png", references=[("old", 0.2, 0)])
    assert path.read_bytes()[:4] == b"\x89PNG"
