"""``data=segments_jsonl``: templates, packaged samples, segment ids of both input layouts, bad input."""

from __future__ import annotations

import json

import pytest

from trustml.data.segments_jsonl import InputTemplate, SegmentsJsonl, SegmentsJsonlConfig
from trustml.errors import ConfigError, DataError
from trustml.knobs.prompts import TemplateInputBuilder


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("sample", ["summarization", "instruction", "grounded"])
def test_packaged_samples_load_with_their_templates(sample):
    templates = {
        "summarization": "Summarize: {document}\nSummary:",
        "instruction": "Instruction: {instruction}\nText: {text}\nAnswer:",
        "grounded": "knowledge: {knowledge} history: {history}",
    }
    data = SegmentsJsonl(SegmentsJsonlConfig(path=f"sample:{sample}", template=templates[sample]))
    data.setup()
    test = data.splits["test"].inputs
    assert len(test) >= 6 and all(e.target for e in test)
    assert set(test[0].segments) == set(InputTemplate.parse(templates[sample]).segment_names)


def test_user_file_with_train_path_splits_train_and_validation(tmp_path):
    rows = [{"q": f"question {i}", "reference": f"answer {i}", "id": i} for i in range(10)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    data = SegmentsJsonl(SegmentsJsonlConfig(path=path, train_path=path, template="Q: {q} A:", val_fraction=0.2))
    data.setup()
    assert (len(data.splits["train"]), len(data.splits["val"]), len(data.splits["test"])) == (8, 2, 10)
    assert data.splits["test"].inputs[3].conversation_id == "3"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{a} and {a}", "twice"),
        ("{control}", "reserved"),
        ("{a:>10}", "plain segment name"),
        ("no fields", "names no segment"),
        ("{a", "not a valid template"),
    ],
)
def test_bad_templates_are_refused(template, message):
    with pytest.raises(ConfigError, match=message):
        SegmentsJsonlConfig(template=template)


def test_options_naming_unknown_segments_are_refused():
    with pytest.raises(ConfigError, match=r"data.max_segment_tokens names segment\(s\) \['history'\]"):
        SegmentsJsonlConfig(template="{text}", max_segment_tokens={"history": 4})
    with pytest.raises(ConfigError, match="no packaged sample 'nope'"):
        SegmentsJsonlConfig(path="sample:nope")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "x", "reference": "y"}, r"segment\(s\) \['knowledge'\] of data.template are not in this line"),
        ({"knowledge": "  ", "text": "x", "reference": "y"}, "segment 'knowledge' is empty"),
        ({"knowledge": 3, "text": "x", "reference": "y"}, "must be a string"),
        ({"knowledge": "k", "text": "x"}, "reference field data.target='reference' is not in this line"),
        (["knowledge"], "must be a JSON object"),
    ],
)
def test_bad_lines_are_one_data_error_with_the_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"knowledge": "k", "text": "t", "reference": "r"}, row])
    data = SegmentsJsonl(SegmentsJsonlConfig(path=path, template="{knowledge} / {text}"))
    with pytest.raises(DataError, match=message) as error:
        data.setup()
    assert "bad.jsonl:2" in str(error.value)


def test_segment_ids_follow_the_template_in_both_layouts(tokenizer):
    template = InputTemplate.parse("Instruction: {instruction} Text: {text} Answer:")
    example = {"instruction": "answer in one word", "text": "which animal barks"}
    names = {1: "answer in one word", 2: "which animal barks"}
    for layout in ("encoder", "prompt"):
        builder = TemplateInputBuilder(tokenizer, template, layout=layout, max_length=64, bos_token_id=101)
        enc = builder([example, {"instruction": "say no", "text": "hi"}])
        ids, segments = enc["input_ids"][0], enc["segment_ids"][0]
        for segment, text in names.items():
            assert tokenizer.decode(ids[segments == segment]) == text
        literal = tokenizer.decode(ids[(segments == 0) & (enc["attention_mask"][0] == 1)], skip_special_tokens=True)
        assert literal == "instruction : text : answer :"
        short = enc["attention_mask"][1]
        # prompts are left-padded (they end where generation starts), encoder inputs right-padded
        assert (short[-1] == 1) if layout == "prompt" else (short[0] == 1 and short[-1] == 0)
    assert enc["input_ids"][0, 0] == 101  # the prompt layout starts with bos


def test_segment_budgets_and_too_long_inputs(tokenizer):
    template = InputTemplate.parse("{history} => {reply}")
    history = "one two three four five six seven eight"
    cut = TemplateInputBuilder(
        tokenizer, template, max_length=64, max_segment_tokens={"history": 3}, keep_last=["history"]
    )
    enc = cut([{"history": history, "reply": "ok"}])
    assert tokenizer.decode(enc["input_ids"][0][enc["segment_ids"][0] == 1]) == "six seven eight"
    tight = TemplateInputBuilder(tokenizer, template, max_length=6, length_hint=" (model.max_source_length)")
    with pytest.raises(DataError, match=r"line 7 is 13 tokens, longer than the 6 the model reads \(model.max_source"):
        tight([{"history": history, "reply": "ok"}], names=["line 7"])
