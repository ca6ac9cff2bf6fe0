"""CEAT: the Contextualized Embedding Association Test (Guo & Caliskan 2021) on any Hugging Face encoder.

A contextual encoder gives a word a different vector in every sentence, so one WEAT effect size depends on
which contexts were picked. CEAT draws ``N`` random contexts per word and combines the ``N`` effect sizes:

1. contexts: for each word of X, Y, A, B, the sentences of a corpus in which it occurs as a whole word
   (lower-case words in any case, names as written; the first occurrence in a sentence is used). A word with no
   such sentence falls back to template sentences (``DEFAULT_TEMPLATES``, e.g. "This is {word}.") and is
   reported in ``fallback_words``.
2. draws ``i = 1..N``: one context per word, uniformly at random (a seeded ``numpy.random.Generator``); the
   contextual embedding of a word is the mean of the last hidden states of its subword tokens in that context
   (token positions from the fast tokenizer's offset mapping). Every sampled (word, context) pair is encoded
   once, in batches; the draws only index into that cache.
3. per draw, the WEAT effect size ``ES_i`` and its within-draw variance ``v_i = std_{w in X u Y}^2 s(w, A, B)``
   (``trustml.fairness.weat``).
4. random-effects combination (DerSimonian-Laird): with fixed-effect weights ``w_i = 1 / v_i``,
   ``Q = sum_i w_i ES_i^2 - (sum_i w_i ES_i)^2 / sum_i w_i``, ``df = N - 1``,
   ``c = sum_i w_i - sum_i w_i^2 / sum_i w_i``, between-draw variance ``tau^2 = max(0, (Q - df) / c)``;
   weights ``w*_i = 1 / (v_i + tau^2)``; the combined effect size ``CES = sum_i w*_i ES_i / sum_i w*_i`` with
   standard error ``SE = sqrt(1 / sum_i w*_i)``; ``z = CES / SE``; two-sided ``p = 2 (1 - Phi(|z|))``; the
   ``1 - alpha`` interval ``CES +- z_{1-alpha/2} SE``. Computed by ``statsmodels``' ``combine_effects``
   (``method_re="dl"``); where its untruncated ``(Q - df) / c`` is negative, ``tau^2 = 0`` and the fixed-effect
   estimate is used, as the formula above says.

PES / PSES (the names the issue asks for). The CEAT paper reports the combined effect size ``CES`` and its
p-value. "PES" is the name of the same quantity in the authors' reference code (``ceat_meta`` of
weiguowilliam/CEAT ``ceat.py``, read through the public code index: ``pes = sum(w*_i e_i) / sum(w*_i)``, the
*pooled effect size*, with a ONE-sided ``p = norm.sf(pes / sqrt(v))``, ``v = 1 / sum w*_i``). "PSES" occurs neither
in the paper's text available here nor in that code; it is read here as the *pooled effect size's standard error*
``PSES = sqrt(1 / sum_i w*_i)`` (``SE`` above). Reported: ``pes`` (``= ces``), ``pses`` (``= se``) and
``p_one_sided`` (``= 1 - Phi(z)``, the authors' code's p-value: small when CES > 0), beside the two-sided
``p_value``.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustml.data.text_files import read_text
from trustml.errors import ConfigError, DataError
from trustml.fairness.weat import DegenerateEffectError, effect_size_and_variance
from trustml.fairness.word_lists import WordTest
from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained

log = logging.getLogger(__name__)

#: Semantically bleached sentences for words without corpus contexts (after May et al. 2019's SEAT).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "This is {word}.",
    "That is {word}.",
    "There is {word}.",
    "Here is {word}.",
    "{word} is here.",
    "{word} is there.",
    "It is {word}.",
    "{word} is a word.",
)

#: Upper bound on float64 elements of one chunk of draws when computing effect sizes.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class WordContexts:
    """Contexts of each word: ``occurrences[word]`` rows are ``(sentence index, char start, char end)``."""

    sentences: tuple[str, ...]
    occurrences: dict[str, np.ndarray]
    fallback_words: tuple[str, ...] = ()

    def count(self, word: str) -> int:
        """Number of contexts of ``word``."""
        return len(self.occurrences[word])


@dataclass(frozen=True)
class RandomEffects:
    """DerSimonian-Laird random-effects combination of effect sizes (see the module docstring's step 4)."""

    combined: float
    se: float
    z: float
    p_value: float
    ci: tuple[float, float]
    tau2: float
    q: float

    @property
    def p_one_sided(self) -> float:
        """``1 - Phi(z)``: the one-sided p-value of the authors' ``ceat_meta`` (H1: combined effect > 0)."""
        from scipy.stats import norm

        return float(norm.sf(self.z))


@dataclass(frozen=True)
class CEATResult:
    """CEAT of one word test: the combined effect size (CES) and its statistics over ``n_draws`` draws."""

    test: str
    ces: float
    p_value: float
    ci: tuple[float, float]
    tau2: float
    se: float
    z: float
    q: float
    effect_sizes: np.ndarray
    variances: np.ndarray
    n_draws: int
    seed: int
    n_encoded: int
    fallback_words: tuple[str, ...]
    context_counts: dict[str, int] = field(default_factory=dict)

    @property
    def p_one_sided(self) -> float:
        """``1 - Phi(z)``, the one-sided p-value of the authors' ``ceat_meta`` (H1: CES > 0)."""
        from scipy.stats import norm

        return float(norm.sf(self.z))

    def to_dict(self, *, include_draws: bool = False) -> dict[str, Any]:
        """JSON-ready summary (the per-draw effect sizes and variances only with ``include_draws``)."""
        out: dict[str, Any] = {
            "test": self.test,
            "ces": self.ces,
            "pes": self.ces,  # the pooled effect size of the authors' code: the same number as CES
            "pses": self.se,  # read as the pooled effect size's standard error (module docstring)
            "p_value": self.p_value,
            "p_one_sided": self.p_one_sided,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "tau2": self.tau2,
            "se": self.se,
            "z": self.z,
            "q": self.q,
            "n_draws": self.n_draws,
            "seed": self.seed,
            "n_encoded": self.n_encoded,
            "fallback_words": list(self.fallback_words),
            "mean_effect_size": float(self.effect_sizes.mean()),
        }
        if include_draws:
            out["effect_sizes"] = self.effect_sizes.tolist()
            out["variances"] = self.variances.tolist()
        return out


def read_corpus(path: str | Path, *, text_field: str = "text", encoding: str = "auto") -> list[str]:
    """Sentences of a corpus file: JSONL (``.jsonl``; the string field ``text_field`` of each line) or plain
    text (one sentence per line). Blank lines are skipped. The file is decoded by ``encoding``
    (:func:`trustml.data.text_files.read_text`; ``auto``: UTF-8, else the detected legacy encoding, with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file {path} does not exist; give a text file (one sentence a line) or JSONL")
    sentences: list[str] = []
    for number, line in enumerate(read_text(path, encoding, "ceat.corpus").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix.lower() != ".jsonl":
            sentences.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be one object") from None
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{number}: no string field '{text_field}'; set text_field to the field with the sentence"
            )
        sentences.append(text.strip())
    if not sentences:
        raise DataError(f"corpus file {path} holds no sentences")
    return sentences


def collect_contexts(
    words: Iterable[str],
    corpus: Sequence[str] | str | Path | None = None,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    text_field: str = "text",
    fallback: bool = True,
) -> WordContexts:
    """Each word's contexts: corpus sentences where it occurs as a whole word, else templates.

    A lower-case word matches in any case ("rose" in "Rose bushes"); a capitalised word (a name) only as written,
    so that the name "Bill" does not take the contexts of "the bill".

    ``corpus`` is a list of sentences, a path to a text/JSONL file (:func:`read_corpus`), or ``None`` (every
    word uses the templates). A word is matched where no letter, digit or underscore touches it on either side;
    the first occurrence in a sentence gives the span. With ``fallback=False`` a word without corpus contexts is
    a ``DataError`` instead of using the templates.
    """
    words = tuple(dict.fromkeys(words))
    if not words:
        raise ConfigError("collect_contexts needs at least one word")
    _check_templates(templates)
    if isinstance(corpus, str | Path):
        corpus = read_corpus(corpus, text_field=text_field)
    sentences: list[str] = []
    found: dict[str, list[tuple[int, int, int]]] = {word: [] for word in words}
    if corpus:
        by_lower: dict[str, list[str]] = {}
        for word in words:
            by_lower.setdefault(word.lower(), []).append(word)
        alternatives = "|".join(re.escape(w) for w in sorted(by_lower, key=len, reverse=True))
        pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        for sentence in corpus:
            matched: dict[str, tuple[int, int]] = {}
            for match in pattern.finditer(sentence):
                for word in by_lower.get(match.group().lower(), ()):
                    if word[:1].islower() or match.group() == word:
                        matched.setdefault(word, match.span())
            if matched:
                index = len(sentences)
                sentences.append(sentence)
                for word, (start, end) in matched.items():
                    found[word].append((index, start, end))
    missing = tuple(word for word in words if not found[word])
    if missing and not fallback:
        raise DataError(
            f"{len(missing)} word(s) never occur as a whole word in the corpus: {list(missing)}; add sentences with "
            "them, or allow the template fallback"
        )
    for word in missing:
        for template in templates:
            start = template.index("{word}")
            found[word].append((len(sentences), start, start + len(word)))
            sentences.append(template.replace("{word}", word))
    if missing:
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        log.warning("%d word(s) have no corpus context and use %d templates: %s", len(missing), len(templates), shown)
    occurrences = {word: np.asarray(rows, dtype=np.int64).reshape(-1, 3) for word, rows in found.items()}
    return WordContexts(tuple(sentences), occurrences, missing)


def encode_contexts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    spans: np.ndarray | Sequence[tuple[int, int]],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
) -> Tensor:
    """Contextual embedding of the word at ``spans[i] = (char start, char end)`` of ``texts[i]``, for every i.

    The embedding is ``mean_{t in T_i} h_t``, the mean of the encoder's last hidden states over the tokens
    ``T_i`` whose character offsets (fast tokenizer's ``offset_mapping``) overlap the span. Texts are encoded in
    batches of similar length; a text whose word lies beyond ``max_length`` tokens is cut on the left (at a
    space) so the word stays inside the window. Returns a float32 ``(len(texts), hidden)`` tensor on the CPU.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("CEAT needs a fast tokenizer (offset mapping); load it with AutoTokenizer(use_fast=True)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(spans) != len(texts):
        raise ConfigError(f"encode_contexts got {len(texts)} texts but {len(spans)} spans")
    max_length = _effective_max_length(model, tokenizer, max_length)
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    cropped = [
        _crop_left(text, int(s), int(e), max_length - specials - (e - s))
        for text, (s, e) in zip(texts, spans, strict=True)
    ]
    device = torch.device(device) if device is not None else _model_device(model)
    accepted = _forward_arguments(model)
    order = np.argsort([len(text) for text, _, _ in cropped], kind="stable")
    out: Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, len(order), batch_size):
                rows = order[begin : begin + batch_size]
                batch = [cropped[i] for i in rows]
                encoded = tokenizer(
                    [text for text, _, _ in batch],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_offsets_mapping=True,
                    return_tensors="pt",
                )
                offsets = encoded.pop("offset_mapping")
                starts = torch.tensor([s for _, s, _ in batch]).unsqueeze(1)
                ends = torch.tensor([e for _, _, e in batch]).unsqueeze(1)
                token_start, token_end = offsets[..., 0], offsets[..., 1]
                mask = (token_end > token_start) & (token_start < ends) & (token_end > starts)
                mask &= encoded["attention_mask"].bool()
                empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
                if empty:
                    text, s, e = batch[empty[0]]
                    raise DataError(
                        f"the word '{text[s:e]}' got no tokens in the context {text[:200]!r} (max_length="
                        f"{max_length}); raise max_length or shorten the corpus sentences"
                    )
                inputs = {k: v.to(device) for k, v in encoded.items() if accepted is None or k in accepted}
                outputs = model(**inputs)
                hidden = getattr(outputs, "last_hidden_state", None)
                hidden = (outputs[0] if hidden is None else hidden).float()
                weights = mask.to(device=device, dtype=hidden.dtype).unsqueeze(-1)
                pooled = ((hidden * weights).sum(dim=1) / weights.sum(dim=1)).cpu()
                if out is None:
                    out = torch.empty(len(texts), pooled.shape[-1], dtype=torch.float32)
                out[torch.as_tensor(rows)] = pooled
    finally:
        model.train(was_training)
    if out is None:
        raise ConfigError("encode_contexts got no texts")
    return out


def random_effects(
    effects: np.ndarray | Sequence[float], variances: np.ndarray | Sequence[float], *, alpha: float = 0.05
) -> RandomEffects:
    """DerSimonian-Laird random-effects combination of effect sizes with within-study variances.

    ``w_i = 1/v_i``; ``Q = sum w_i e_i^2 - (sum w_i e_i)^2 / sum w_i``; ``tau^2 = max(0, (Q - (k-1)) / c)`` with
    ``c = sum w_i - sum w_i^2 / sum w_i``; ``w*_i = 1/(v_i + tau^2)``; combined ``sum w*_i e_i / sum w*_i``,
    ``SE = sqrt(1 / sum w*_i)``, ``z = combined / SE``, two-sided ``p = 2 (1 - Phi(|z|))``, normal ``1 - alpha``
    interval. Computed with ``statsmodels.stats.meta_analysis.combine_effects(method_re="dl")``, whose
    ``tau^2`` is not truncated at 0: where it is negative the fixed-effect results (``tau^2 = 0``) are returned.
    """
    effects = np.asarray(effects, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    if effects.ndim != 1 or effects.shape != variances.shape or len(effects) < 2:
        raise ConfigError(
            f"random_effects needs two 1-D arrays of the same length >= 2, got shapes {effects.shape} and "
            f"{variances.shape}"
        )
    if not (np.isfinite(effects).all() and np.isfinite(variances).all() and (variances > 0).all()):
        raise DataError("random_effects needs finite effect sizes and finite, positive variances")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    try:
        from scipy.stats import norm
        from statsmodels.stats.meta_analysis import combine_effects
    except ImportError:
        raise ConfigError("CEAT needs statsmodels: pip install 'trustml[fairness]'") from None
    with np.errstate(invalid="ignore", divide="ignore"):  # unused HKSJ terms take sqrt(<0) when tau^2 < 0
        result = combine_effects(effects, variances, method_re="dl", use_t=False, alpha=alpha)
        ci_fe, ci_re = result.conf_int(alpha=alpha, use_t=False)[:2]
    # statsmodels 0.15 leaves the DL moment estimate (Q - df) / c untruncated; DerSimonian-Laird (and CEAT)
    # truncate it at 0, where the random-effects estimate is the fixed-effect one.
    if result.tau2 > 0:
        tau2, combined, se, (low, high) = float(result.tau2), result.mean_effect_re, result.sd_eff_w_re, ci_re
    else:
        tau2, combined, se, (low, high) = 0.0, result.mean_effect_fe, result.sd_eff_w_fe, ci_fe
    combined, se = float(combined), float(se)
    z = combined / se
    return RandomEffects(
        combined=combined,
        se=se,
        z=z,
        p_value=float(2 * norm.sf(abs(z))),
        ci=(float(low), float(high)),
        tau2=tau2,
        q=float(result.q),
    )


def ceat(
    test: WordTest,
    model: torch.nn.Module,
    tokenizer: Any,
    corpus: Sequence[str] | str | Path | None = None,
    *,
    n_draws: int = 1000,
    seed: int = 0,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    text_field: str = "text",
    contexts: WordContexts | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    alpha: float = 0.05,
) -> CEATResult:
    """CEAT of ``test`` (X, Y, A, B) with ``model`` + fast ``tokenizer`` over ``n_draws`` random context draws.

    Contexts come from ``corpus`` (see :func:`collect_contexts`) unless ``contexts`` is given. Each draw picks
    one context per distinct word with a ``numpy.random.default_rng(seed)``; every sampled (word, context) pair
    is encoded once (:func:`encode_contexts`), and the draws index that cache. Per draw, the WEAT effect size
    ``ES_i`` and ``v_i = std^2_{w in X u Y} s(w, A, B)``; combined by :func:`random_effects` (DerSimonian-Laird):
    ``CES = sum_i ES_i / (v_i + tau^2) / sum_i 1 / (v_i + tau^2)``, two-sided p-value from ``z = CES / SE``.
    """
    if n_draws < 2:
        raise ConfigError(f"n_draws must be >= 2 for the random-effects combination, got {n_draws}")
    words = test.words
    check_words_placeable(words, tokenizer, test.name)
    if contexts is None:
        contexts = collect_contexts(words, corpus, templates=templates, text_field=text_field)
    absent = [word for word in words if word not in contexts.occurrences or contexts.count(word) == 0]
    if absent:
        raise ConfigError(f"the given contexts have none for {absent}; build them with collect_contexts")
    counts = np.array([contexts.count(word) for word in words], dtype=np.int64)
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, counts[None, :], size=(n_draws, len(words)))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_ids, rows = np.unique(first[None, :] + choice, return_inverse=True)
    rows = rows.reshape(n_draws, len(words))
    table = np.concatenate([contexts.occurrences[word] for word in words])[pair_ids]
    # float32 on the CPU (one row per sampled pair); each chunk of draws is normalised in float64 by weat.
    cache = encode_contexts(
        model,
        tokenizer,
        [contexts.sentences[i] for i in table[:, 0]],
        table[:, 1:],
        batch_size=batch_size,
        max_length=max_length,
        device=device,
    )
    position = {word: i for i, word in enumerate(words)}
    index = [torch.tensor([position[w] for w in word_set.words]) for word_set in test.sets]
    chunk = max(1, _CHUNK_ELEMENTS // (len(words) * cache.shape[1]))
    rows_t = torch.from_numpy(rows)
    effects, variances = [], []
    for begin in range(0, n_draws, chunk):
        draw = cache[rows_t[begin : begin + chunk]]
        try:
            effect, variance = effect_size_and_variance(*(draw[:, i] for i in index))
        except DegenerateEffectError as exc:
            raise DegenerateEffectError(f"CEAT of '{test.name}', draws from {begin}: {exc}") from None
        effects.append(effect)
        variances.append(variance)
    effect_sizes = torch.cat(effects).numpy()
    draw_variances = torch.cat(variances).numpy()
    combined = random_effects(effect_sizes, draw_variances, alpha=alpha)
    return CEATResult(
        test=test.name,
        ces=combined.combined,
        p_value=combined.p_value,
        ci=combined.ci,
        tau2=combined.tau2,
        se=combined.se,
        z=combined.z,
        q=combined.q,
        effect_sizes=effect_sizes,
        variances=draw_variances,
        n_draws=n_draws,
        seed=seed,
        n_encoded=len(pair_ids),
        fallback_words=contexts.fallback_words,
        context_counts=dict(zip(words, counts.tolist(), strict=True)),
    )


def check_words_placeable(words: Sequence[str], tokenizer: Any, test_name: str = "the test") -> None:
    """Refuse words the tokenizer cannot place: no token at all (e.g. only zero-width or control characters), or a
    token that is the unknown token (e.g. characters outside the vocabulary). Their "contextual embedding" would be
    nothing, or the unknown token's state shared by every such word, so the effect sizes would be meaningless.
    Raises one :class:`ConfigError` naming every such word of ``test_name`` and the fix."""
    unk = getattr(tokenizer, "unk_token_id", None)
    empty, unknown = [], []
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            empty.append(word)
        elif unk is not None and unk in ids:
            unknown.append(word)
    if empty or unknown:
        found = ([f"no token for {empty}"] if empty else []) + (
            [f"the unknown token {getattr(tokenizer, 'unk_token', 'UNK')} for {unknown}"] if unknown else []
        )
        raise ConfigError(
            f"word test '{test_name}': the encoder's tokenizer gives {' and '.join(found)}; remove these words from "
            "the word list (or spell them as the vocabulary does), or use an encoder whose tokenizer knows them"
        )


class LeftContextEncoder(torch.nn.Module):
    """A decoder-only LM's base model as a CEAT encoder: its last hidden states from the input ids and attention
    mask only (no token-type ids, which e.g. GPT-2 would embed), so each word's embedding sees its left context."""

    def __init__(self, base_model: torch.nn.Module) -> None:
        super().__init__()
        self.base_model = base_model
        self.config = base_model.config
        self.train(base_model.training)  # a fresh module is in training mode: take the wrapped model's mode

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask)


def load_encoder(name_or_path: str = OFFLINE_MINILM, *, device: torch.device | str | None = None) -> tuple[Any, Any]:
    """``(model, fast tokenizer)`` of a local Hugging Face encoder (never downloads), in eval mode.

    ``name_or_path`` is a local directory, a name already in the local Hugging Face cache, or the offline
    MiniLM package name (the default).
    """
    from transformers import AutoModel, AutoTokenizer

    source = resolve_pretrained(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise ConfigError(
            f"encoder '{name_or_path}' could not be loaded offline ({exc}); give a local path or '{OFFLINE_MINILM}'"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encoder '{name_or_path}' has no fast tokenizer (tokenizer.json); CEAT needs its offsets")
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


def _check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise ConfigError("templates must hold at least one sentence with '{word}'")
    for template in templates:
        if template.count("{word}") != 1:
            raise ConfigError(f"template {template!r} must contain '{{word}}' exactly once")


def _crop_left(text: str, start: int, end: int, budget: int) -> tuple[str, int, int]:
    """Cut ``text`` at a space so that at most ``budget`` characters precede the word at ``[start, end)``.

    A token covers at least one character, so this keeps the word inside a window of ``budget + word length``
    tokens whatever the tokenizer.
    """
    budget = max(budget, 0)
    if start <= budget:
        return text, start, end
    space = re.search(r"\s+", text[start - budget : start])
    cut = start - budget + space.end() if space else start
    return text[cut:], start - cut, end - cut


def _effective_max_length(model: torch.nn.Module, tokenizer: Any, max_length: int) -> int:
    if max_length < 8:
        raise ConfigError(f"max_length must be >= 8 tokens, got {max_length}")
    limits = [max_length, getattr(tokenizer, "model_max_length", max_length)]
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int):
        limits.append(positions)
    return int(min(limits))


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _forward_arguments(model: torch.nn.Module) -> set[str] | None:
    """Names the model's ``forward`` accepts (``None``: it takes ``**kwargs``, so pass every input)."""
    parameters = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}
