"""Segment ids of tokenized inputs, and the step schedules of attention knobs."""

from __future__ import annotations

import pytest
import torch

from trustml.errors import ConfigError
from trustml.knobs import SegmentedInputBuilder, SegmentSpec, SegmentVocabulary, StepSchedule


def _words(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_segment_ids_follow_the_markers(tokenizer, builder, batch):
    vocab = builder.vocabulary
    assert vocab.all_names == ("other", "knowledge", "history", "control")
    for row in range(batch["input_ids"].shape[0]):
        tokens = _words(tokenizer, batch["input_ids"][row].tolist())
        segments = batch["segment_ids"][row].tolist()
        real = batch["attention_mask"][row].bool().tolist()
        for token, segment, is_real in zip(tokens, segments, real, strict=True):
            if token in ("[CLS]", "[SEP]") or not is_real:
                assert segment == 0
        history_start = tokens.index("history")
        assert all(s == vocab.id_of("knowledge") for s in segments[1:history_start])
        end = sum(real) - 1
        assert all(s == vocab.id_of("history") for s in segments[history_start:end])


def test_budgets_keep_first_knowledge_and_last_history(tokenizer):
    builder = SegmentedInputBuilder(
        tokenizer, [SegmentSpec("knowledge", "k:", max_tokens=3), SegmentSpec("history", "h:", 2, keep="last")]
    )
    out = builder([{"knowledge": "one two three four five", "history": "alpha beta gamma delta"}])
    text = tokenizer.decode(out["input_ids"][0], skip_special_tokens=True)
    assert text == "k : one two three h : gamma delta"


def test_empty_and_missing_segments(tokenizer):
    builder = SegmentedInputBuilder(tokenizer, [SegmentSpec("knowledge"), SegmentSpec("history", "h:")])
    out = builder([{"history": "hello there"}, {"knowledge": "facts here", "history": ""}])
    assert set(out["segment_ids"][0][out["attention_mask"][0].bool()].tolist()) == {0, 2}
    assert set(out["segment_ids"][1][out["attention_mask"][1].bool()].tolist()) == {0, 1, 2}


def test_segment_errors(tokenizer):
    with pytest.raises(ConfigError, match="reserved"):
        SegmentVocabulary(("knowledge", "control"))
    with pytest.raises(ConfigError, match="duplicates"):
        SegmentVocabulary(("a", "a"))
    with pytest.raises(ConfigError, match="known segments"):
        SegmentVocabulary(("a",)).id_of("b")
    with pytest.raises(ConfigError, match="keep"):
        SegmentSpec("a", keep="middle")
    with pytest.raises(ConfigError, match="max_tokens"):
        SegmentSpec("a", max_tokens=0)
    builder = SegmentedInputBuilder(tokenizer, [SegmentSpec("knowledge")])
    with pytest.raises(ConfigError, match="not in the builder's segments"):
        builder([{"persona": "x"}])

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ConfigError, match="fast tokenizer"):
        SegmentedInputBuilder(SlowTokenizer(), [SegmentSpec("knowledge")])


def test_log_values_per_segment():
    vocab = SegmentVocabulary(("knowledge", "history"))
    logs = vocab.log_values({"knowledge": 4.0, "control": 0.5})
    torch.testing.assert_close(logs, torch.log(torch.tensor([1.0, 4.0, 1.0, 0.5])))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (StepSchedule(), [1, 1, 1, 1, 1]),
        (StepSchedule(start=2), [0, 0, 1, 1, 1]),
        (StepSchedule("linear_decay", steps=4), [1, 0.75, 0.5, 0.25, 0]),
        (StepSchedule("exponential_decay", start=1, rate=0.5), [0, 1, 0.5, 0.25, 0.125]),
        (StepSchedule("window", start=1, steps=2), [0, 1, 1, 0, 0]),
    ],
)
def test_schedules(schedule, expected):
    torch.testing.assert_close(schedule.strengths(torch.arange(5)), torch.tensor(expected, dtype=torch.float32))


def test_schedule_errors():
    for kwargs, message in [
        ({"kind": "cosine"}, "unknown"),
        ({"start": -1}, "start"),
        ({"kind": "window", "steps": 0}, "steps"),
        ({"kind": "exponential_decay", "rate": 0.0}, "rate"),
    ]:
        with pytest.raises(ConfigError, match=message):
            StepSchedule(**kwargs)
