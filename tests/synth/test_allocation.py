"""Entropy-based allocation: entropies, pattern complexity, budgets that sum up, the borrow mode."""

from __future__ import annotations

import math

import pytest

from trustml.errors import ConfigError
from trustml.synth.allocation import allocate, allocation_report, entropy, largest_remainder, pattern_stats
from trustml.synth.annotation import parse_annotated


def test_entropy_in_bits() -> None:
    assert entropy([1, 1, 1, 1]) == pytest.approx(2.0)
    assert entropy([5]) == 0.0
    assert entropy([]) == 0.0
    assert entropy([3, 1]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def _golden():
    texts = (
        [
            "play [a](artist) [s1](track)",
            "play [b](artist) [s2](track)",
            "play [c](artist) [s3](track)",
            "play [d](artist) [s4](track)",
        ]
        + ["play [pop](genre) music"] * 6
        + ["stop"]
    )
    return [parse_annotated(t, "PlayMusic") for t in texts]


def test_pattern_complexity_adds_value_and_combination_entropies() -> None:
    stats = {st.pattern: st for st in pattern_stats(_golden())}
    two = stats[("other", "artist", "track")]
    assert two.count == 4
    assert two.value_entropy == pytest.approx(4.0)  # artist and track: 4 equally likely values each
    assert two.combination_entropy == pytest.approx(2.0)  # 4 distinct (artist, track) pairs
    genre = stats[("other", "genre", "other")]
    assert genre.complexity == 0.0 and genre.count == 6
    assert stats[("other",)].complexity == 0.0


def test_entropy_allocation_favours_complex_patterns_and_borrow_copies_frequencies() -> None:
    stats = pattern_stats(_golden())
    entropy_counts = allocate(stats, {"PlayMusic": 100}, "entropy", floor=5)
    borrow_counts = allocate(stats, {"PlayMusic": 110}, "borrow")
    key_two, key_genre = ("PlayMusic", ("other", "artist", "track")), ("PlayMusic", ("other", "genre", "other"))
    assert sum(entropy_counts.values()) == 100
    assert entropy_counts[key_two] == 90 and entropy_counts[key_genre] == 5
    assert borrow_counts == {key_two: 40, key_genre: 60, ("PlayMusic", ("other",)): 10}
    rows = allocation_report(stats, entropy_counts)
    assert {r["pattern"]: r["allocated"] for r in rows}["other + artist + track"] == 90


def test_floor_is_dropped_when_the_budget_is_too_small() -> None:
    counts = allocate(pattern_stats(_golden()), {"PlayMusic": 2}, "entropy", floor=5)
    assert sum(counts.values()) == 2


def test_largest_remainder_sums_exactly() -> None:
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]
    assert sum(largest_remainder([0.2, 0.3, 0.5, 0.0], 7)) == 7
    assert largest_remainder([0, 0], 3) == [2, 1]


def test_bad_allocation_options() -> None:
    with pytest.raises(ConfigError, match="'entropy' or 'borrow'"):
        allocate([], {}, "greedy")
    with pytest.raises(ConfigError, match="non-negative"):
        largest_remainder([1.0], -1)
