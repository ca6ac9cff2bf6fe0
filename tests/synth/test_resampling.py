"""Guided resampling: Jaccard policy, blocked swaps, reports."""

from __future__ import annotations

import pytest

from trustml.errors import ConfigError
from trustml.synth.annotation import parse_annotated
from trustml.synth.resampling import jaccard, resample, swap_policy, swap_values, value_sets


def _golden():
    music = ["play [pop](genre) music", "play [rock](genre) music", "play [jazz](genre) music"]
    books = ["find a [detective](genre) novel", "find a [romance](genre) novel", "find a [Pop](genre) novel"]
    weather = ["weather in [Paris](city)", "weather in [Rome](city)"]
    restaurant = ["table in [Paris](city)", "table in [Oslo](city)"]
    return (
        [parse_annotated(t, "PlayMusic") for t in music]
        + [parse_annotated(t, "SearchBook") for t in books]
        + [parse_annotated(t, "GetWeather") for t in weather]
        + [parse_annotated(t, "BookRestaurant") for t in restaurant]
    )


def test_jaccard_is_case_insensitive() -> None:
    assert jaccard(["Pop", "rock"], ["pop", "jazz"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 0.0


def test_low_overlap_blocks_swaps_so_play_detective_music_never_appears() -> None:
    golden = _golden()
    policy = swap_policy(value_sets(golden), threshold=0.3)
    assert policy.jaccard[(("PlayMusic", "genre"), ("SearchBook", "genre"))] == pytest.approx(0.2)
    assert not policy.allowed(("PlayMusic", "genre"), ("SearchBook", "genre"))
    assert policy.allowed(("GetWeather", "city"), ("BookRestaurant", "city"))  # J = 1/3
    out, report = resample(golden, 400, policy, seed=0)
    texts = {u.text for u in out}
    assert "play detective music" not in texts and "play romance music" not in texts
    assert "weather in Oslo" in texts  # Oslo only came with BookRestaurant
    assert report["swaps"]["BookRestaurant/city -> GetWeather/city"] > 0
    assert not any("SearchBook" in key and "PlayMusic" in key for key in report["swaps"])
    assert {"a": "PlayMusic/genre", "b": "SearchBook/genre", "jaccard": 0.2} in report["blocked"]
    assert report["generated"] == 400


def test_a_permissive_threshold_allows_the_swap() -> None:
    golden = _golden()
    policy = swap_policy(value_sets(golden), threshold=0.1)
    out, _ = resample(golden, 600, policy, seed=0)
    assert "play detective music" in {u.text for u in out}


def test_swap_values_keeps_carriers_and_fixes_spans() -> None:
    golden = _golden()
    policy = swap_policy(value_sets(golden, by_intent=False), threshold=1.0, by_intent=False)
    out, _ = swap_values(golden, policy, seed=1)
    for src, new in zip(golden, out, strict=True):
        assert new.text.split()[0] == src.text.split()[0]
        assert [s.slot for s in new.spans] == [s.slot for s in src.spans]
        assert all(new.value(s) in {v for v, _ in policy.pools[("*", s.slot)]} for s in new.spans)
    assert {u.value(u.spans[0]) for u in out if u.intent == "SearchBook"} <= {
        "pop",
        "rock",
        "jazz",
        "detective",
        "romance",
        "Pop",
    }
    assert {u.value(u.spans[0]) for u in out if u.intent == "GetWeather"} <= {"Paris", "Rome", "Oslo"}


def test_threshold_must_be_a_fraction() -> None:
    with pytest.raises(ConfigError, match=r"threshold must lie in \[0, 1\]"):
        swap_policy({}, threshold=1.5)
