"""Canary extraction by model inversion (ModIvA; Parikh, Dupuy and Gupta, ACL 2022).

A white-box attacker holds every parameter of a trained text classifier and knows the canary's template
("my pin code is {secret}"), the number ``n`` of unknown tokens, their alphabet ``A`` (``|A| = K``) and the
canary's label ``y``. Each unknown position ``j`` gets free logits ``z_j in R^K``; its relaxed token is the
distribution ``p_j = softmax(z_j / tau)`` and its input vector the mixed embedding ``e_j = sum_a p_j(a) E[a]``
(``E``: the model's input embedding matrix). The known tokens are embedded as usual, the sequence goes through
the encoder, pooling and head, and Adam minimizes over ``z``

    L(z) = CE(f(e_1..e_n), y) + lambda * sum_j H(p_j)

(``H``: entropy; the optional prior ``lambda > 0`` pushes each ``p_j`` towards one token, i.e. towards an input
the model can actually receive). The temperature ``tau`` falls geometrically from ``tau_start`` to ``tau_end``
over the steps. ``R`` restarts (independent random ``z``) run as one batch; the attacker keeps the restart with
the lowest final ``L`` (it needs no knowledge of the secret to choose).

Reading off: the recovered secret is ``argmax_a p_j(a)`` at each position. Every candidate ``c in A^n`` is
scored by ``s(c) = sum_j log p_j(c_j)`` under the final distribution (at ``tau_end``), and the true secret's rank
is ``1 + #{c != secret : s(c) >= s(secret)}`` (ties count against the secret, as in
:func:`trustml.privacy.audit.canary.exposure`). The rank is counted exactly without enumerating ``A^n``: the
per-position log-probabilities are quantized to integers (multiples of ``2^-32`` nats) so that sums are exact,
then candidates are counted by meet-in-the-middle (all sums of the first half of the positions against the
sorted sums of the second half) or, for spaces too large for that, by a branch-and-bound count over positions
sorted by score. ``success@k`` is ``rank <= k``.
"""

from __future__ import annotations

import math
import string
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.privacy.audit.canary import DEFAULT_TEMPLATE
from trustml.privacy.audit.canary_text import CanarySpec
from trustml.privacy.audit.runs import checkpoint_test_accuracy, load_audited_run
from trustml.run_record import write_json_atomic

#: Named alphabets of ``--alphabet`` (anything else is a string of one-character symbols, or comma-separated tokens).
NAMED_ALPHABETS = {"digits": string.digits, "letters": string.ascii_lowercase}
ANY_TOKEN = "any"
#: Quantization of log-probabilities for exact integer rank counting: ``round(log p * 2^32)``.
SCORE_SCALE = float(2**32)
#: Largest half-space meet-in-the-middle enumerates (entries of one half's sum table).
MAX_HALF_TABLE = 4_000_000
#: Largest number of search nodes the branch-and-bound count visits before giving up (rank reported as ``None``).
MAX_SEARCH_NODES = 20_000_000


@dataclass
class InversionOptions:
    """Options of the attack (``trustml-audit invert``); see the module docstring for the objective."""

    steps: int = 300
    lr: float = 0.1
    restarts: int = 8
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    entropy_weight: float = 0.0
    init_scale: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.restarts < 1:
            raise ConfigError(f"--restarts must be >= 1, got {self.restarts}")
        if self.temperature_start <= 0 or self.temperature_end <= 0:
            raise ConfigError(
                f"--temperature-start and --temperature-end must be positive, got {self.temperature_start} and "
                f"{self.temperature_end}"
            )
        if self.entropy_weight < 0:
            raise ConfigError(f"--entropy-weight must be >= 0, got {self.entropy_weight}")
        if self.init_scale < 0:
            raise ConfigError(f"--init-scale must be >= 0, got {self.init_scale}")

    def temperature(self, step: int) -> float:
        """``tau_t = tau_start * (tau_end / tau_start)^(t / (steps - 1))``: geometric from start to end."""
        if self.steps == 1:
            return self.temperature_end
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** (step / (self.steps - 1))


@dataclass(frozen=True)
class Alphabet:
    """The candidate symbols of one unknown position and the single token id each is read as."""

    symbols: tuple[str, ...]
    token_ids: tuple[int, ...]
    name: str

    def __len__(self) -> int:
        return len(self.symbols)


def parse_symbols(alphabet: str) -> tuple[str, ...]:
    """The symbols of ``--alphabet``: ``digits``, ``letters``, comma-separated tokens, or one symbol per character."""
    text = NAMED_ALPHABETS.get(alphabet, alphabet)
    if "," in text:
        symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    else:
        symbols = tuple(text)
    if len(set(symbols)) < 2:
        raise ConfigError(f"--alphabet '{alphabet}' needs at least 2 distinct symbols")
    if len(set(symbols)) != len(symbols):
        raise ConfigError(f"--alphabet '{alphabet}' repeats a symbol")
    return symbols


def resolve_alphabet(tokenizer: Any, alphabet: str) -> Alphabet:
    """Map every symbol of ``alphabet`` to exactly one token id of ``tokenizer``, or raise a ConfigError naming it.

    ``any``: every token of the vocabulary except the special ones (``[CLS]``, ``[PAD]``, ...). Otherwise each
    symbol must tokenize to one known token (not the unknown token, not several word pieces) and no two symbols
    may become the same token (e.g. ``é`` and ``e`` under an accent-stripping tokenizer).
    """
    if alphabet == ANY_TOKEN:
        special = set(tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        pairs = sorted((i, t) for t, i in vocab.items() if i not in special)
        return Alphabet(tuple(t for _, t in pairs), tuple(i for i, _ in pairs), ANY_TOKEN)
    symbols = parse_symbols(alphabet)
    ids: list[int] = []
    seen: dict[int, str] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for symbol in symbols:
        pieces = tokenizer.tokenize(symbol)
        if len(pieces) > 1:
            raise ConfigError(
                f"--alphabet symbol '{symbol}' splits into {len(pieces)} word pieces {pieces} under the run's "
                "tokenizer; the attack recovers one token per unknown position: use symbols that are single tokens "
                "(e.g. --alphabet digits) or more unknown positions"
            )
        token_id = tokenizer.convert_tokens_to_ids(pieces[0]) if pieces else None
        if token_id is None or token_id == unk:
            raise ConfigError(
                f"--alphabet symbol '{symbol}' cannot be produced by the run's tokenizer (it becomes "
                f"{pieces or 'nothing'}); the model never saw it, so it cannot be recovered: remove it from --alphabet"
            )
        if token_id in seen:
            raise ConfigError(
                f"--alphabet symbols '{seen[token_id]}' and '{symbol}' are the same token '{pieces[0]}' for the run's "
                "tokenizer; keep one of them"
            )
        seen[token_id] = symbol
        ids.append(int(token_id))
    return Alphabet(symbols, tuple(ids), alphabet)


@dataclass(frozen=True)
class CanaryLayout:
    """Token ids around the unknown positions: ``prefix_ids + [n unknown] + suffix_ids`` (special tokens included)."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    num_unknown: int


def canary_layout(tokenizer: Any, template: str, num_unknown: int, max_length: int) -> CanaryLayout:
    """Split the tokenized template at ``{secret}`` (unknown tokens space-separated, as insert-canary writes)."""
    if template.count("{secret}") != 1:
        raise ConfigError(f"--template '{template}' must hold {{secret}} exactly once")
    before, after = template.split("{secret}")
    pieces_before = tokenizer.tokenize(before) if before.strip() else []
    pieces_after = tokenizer.tokenize(after) if after.strip() else []
    cls_ids = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
    sep_ids = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
    prefix = (*cls_ids, *tokenizer.convert_tokens_to_ids(pieces_before))
    suffix = (*tokenizer.convert_tokens_to_ids(pieces_after), *sep_ids)
    total = len(prefix) + num_unknown + len(suffix)
    if total > max_length:
        raise ConfigError(
            f"the canary has {total} tokens but the run's model reads at most model.max_length={max_length}; "
            "use fewer unknown tokens or a shorter --template"
        )
    return CanaryLayout(tuple(int(i) for i in prefix), tuple(int(i) for i in suffix), num_unknown)


def check_layout_matches(tokenizer: Any, layout: CanaryLayout, template: str, secret_ids: list[int]) -> None:
    """The tokenized canary sentence must equal ``prefix + secret + suffix`` (the sequence the model trained on)."""
    words = tokenizer.convert_ids_to_tokens(secret_ids)
    sentence = template.format(secret=" ".join(tokenizer.convert_tokens_to_string([w]) for w in words))
    expected = [*layout.prefix_ids, *secret_ids, *layout.suffix_ids]
    got = tokenizer(sentence)["input_ids"]
    if list(got) != expected:
        raise ConfigError(
            f"the canary sentence '{sentence}' tokenizes to {tokenizer.convert_ids_to_tokens(got)}, not to the "
            f"template's tokens around {len(secret_ids)} single tokens ({tokenizer.convert_ids_to_tokens(expected)}); "
            "the secret's symbols merge with the template under this tokenizer: check --template and --alphabet"
        )


def text_classifier_parts(model: nn.Module) -> tuple[Any, nn.Module, nn.Embedding]:
    """The tokenizer, encoder and input embedding of a run's text classifier (``model=hf_encoder``)."""
    tokenizer = getattr(model, "tokenizer", None)
    encoder = getattr(model, "encoder_module", None)
    if tokenizer is None or encoder is None or not hasattr(encoder, "get_input_embeddings"):
        raise ConfigError(
            f"trustml-audit invert needs a run of a token-level text classifier (model=hf_encoder, pretrained or "
            f"from scratch with model.random_init_config); this run's model is {type(model).__name__}"
        )
    return tokenizer, encoder, encoder.get_input_embeddings()


def relaxed_logits(model: nn.Module, probs: Tensor, alphabet_ids: Tensor, layout: CanaryLayout) -> Tensor:
    """Class logits ``[R, C]`` of the canary, each unknown position's embedding mixed by ``probs`` ``[R, n, K]``."""
    _, encoder, embedding = text_classifier_parts(model)
    weight = embedding.weight
    rows = probs.shape[0]
    mixed = probs.to(weight.dtype) @ weight[alphabet_ids]  # [R, n, d]
    prefix = weight[torch.tensor(layout.prefix_ids, dtype=torch.long)].expand(rows, -1, -1)
    suffix = weight[torch.tensor(layout.suffix_ids, dtype=torch.long)].expand(rows, -1, -1)
    embeds = torch.cat([prefix, mixed, suffix], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    hidden = encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    from trustml.models.hf_encoder import mean_pool

    return model.head(model.body(mean_pool(hidden, mask)))


def attack_loss(logits: Tensor, probs: Tensor, label: int, entropy_weight: float) -> Tensor:
    """Per restart: ``CE(logits, y) + lambda * sum_j H(p_j)`` ``[R]``."""
    target = torch.full((logits.shape[0],), label, dtype=torch.long)
    loss = F.cross_entropy(logits, target, reduction="none")
    if entropy_weight:
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).sum(dim=-1)
        loss = loss + entropy_weight * entropy
    return loss


def optimize_distribution(
    model: nn.Module, alphabet: Alphabet, layout: CanaryLayout, label: int, options: InversionOptions
) -> tuple[Tensor, Tensor]:
    """Run the attack: the final logits ``z`` ``[R, n, K]`` of every restart and their final objective ``[R]``."""
    model.eval()
    params = list(model.parameters())
    required = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(options.seed)
    z = torch.randn(options.restarts, layout.num_unknown, len(alphabet), generator=generator) * options.init_scale
    z.requires_grad_(True)
    ids = torch.tensor(alphabet.token_ids, dtype=torch.long)
    optimizer = torch.optim.Adam([z], lr=options.lr)
    try:
        for step in range(options.steps):
            probs = torch.softmax(z / options.temperature(step), dim=-1)
            loss = attack_loss(relaxed_logits(model, probs, ids, layout), probs, label, options.entropy_weight)
            optimizer.zero_grad()
            loss.sum().backward()  # restarts are independent: the sum's gradient is each restart's own
            optimizer.step()
        with torch.no_grad():
            probs = torch.softmax(z / options.temperature_end, dim=-1)
            final = attack_loss(relaxed_logits(model, probs, ids, layout), probs, label, options.entropy_weight)
    finally:
        for p, r in zip(params, required, strict=True):
            p.requires_grad_(r)
    return z.detach(), final


def discrete_losses(model: nn.Module, index: Tensor, alphabet: Alphabet, layout: CanaryLayout, label: int) -> Tensor:
    """``CE(f(sentence), y)`` ``[R]`` of the real sentences whose unknown tokens are ``index`` ``[R, n]``."""
    token_ids = torch.tensor(alphabet.token_ids, dtype=torch.long)[index]
    rows = index.shape[0]
    prefix = torch.tensor(layout.prefix_ids, dtype=torch.long).expand(rows, -1)
    suffix = torch.tensor(layout.suffix_ids, dtype=torch.long).expand(rows, -1)
    ids = torch.cat([prefix, token_ids, suffix], dim=1)
    with torch.no_grad():
        logits = model({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return F.cross_entropy(logits, torch.full((rows,), label, dtype=torch.long), reduction="none")


# --- exact ranks without enumeration ---------------------------------------------------------------------


def quantized_scores(log_probs: np.ndarray) -> np.ndarray:
    """``round(log p * 2^32)`` as int64 ``[n, K]``: integer scores whose sums are exact (ranks are exact counts)."""
    return np.rint(np.asarray(log_probs, dtype=np.float64) * SCORE_SCALE).astype(np.int64)


def count_at_least(scores: np.ndarray, threshold: int, limit: int | None = None) -> int | None:
    """``#{c in A^n : sum_j scores[j, c_j] >= threshold}`` for integer ``scores`` ``[n, K]``, exactly.

    Meet-in-the-middle when a half's table has at most :data:`MAX_HALF_TABLE` entries; otherwise a branch-and-bound
    count (positions' scores sorted descending; a branch is counted whole when even its minimum reaches the
    threshold and dropped when even its maximum does not). With ``limit``, counting may stop once the count
    exceeds ``limit`` (a value ``> limit`` is returned). ``None`` when the search needs more than
    :data:`MAX_SEARCH_NODES` nodes.
    """
    n, k = scores.shape
    half = n // 2
    if k ** max(half, n - half) <= MAX_HALF_TABLE:
        left = _all_sums(scores[:half])
        right = np.sort(_all_sums(scores[half:]))
        positions = np.searchsorted(right, threshold - left, side="left")
        return int((right.size - positions).sum())
    ordered = [sorted((int(v) for v in row), reverse=True) for row in scores]
    ascending = [row[::-1] for row in ordered]
    max_rest = [0] * (n + 1)
    min_rest = [0] * (n + 1)
    for j in range(n - 1, -1, -1):
        max_rest[j] = max_rest[j + 1] + ordered[j][0]
        min_rest[j] = min_rest[j + 1] + ordered[j][-1]
    nodes = 0

    def count(j: int, need: int) -> int:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_SEARCH_NODES:
            raise _SearchTooLarge
        if max_rest[j] < need:
            return 0
        if min_rest[j] >= need:
            return k ** (n - j)
        if j == n - 1:
            return k - bisect_left(ascending[j], need)
        total = 0
        for value in ordered[j]:
            if value + max_rest[j + 1] < need:
                break
            total += count(j + 1, need - value)
            if limit is not None and total > limit:
                break
        return total

    try:
        return count(0, threshold)
    except _SearchTooLarge:
        return None


class _SearchTooLarge(Exception):
    """The branch-and-bound count exceeded its node budget."""


def _all_sums(scores: np.ndarray) -> np.ndarray:
    """Every sum ``sum_j scores[j, c_j]`` over ``c`` in the product of the rows (``[1]`` of 0 for no rows)."""
    sums = np.zeros(1, dtype=np.int64)
    for row in scores:
        sums = (sums[:, None] + row[None, :]).ravel()
    return sums


def secret_rank(log_probs: np.ndarray, secret_index: list[int], limit: int | None = None) -> int | None:
    """Rank of the secret (``secret_index[j]``: its symbol's index at position ``j``) among all of ``A^n`` under
    ``s(c) = sum_j log p_j(c_j)``: ``#{c : s(c) >= s(secret)}`` (so ties count against the secret; rank 1 = unique
    best). With ``limit``, any rank above ``limit`` may be returned as ``limit + 1``. ``None`` if not countable."""
    scores = quantized_scores(log_probs)
    threshold = int(sum(int(scores[j, i]) for j, i in enumerate(secret_index)))
    rank = count_at_least(scores, threshold, limit)
    if rank is not None and limit is not None:
        rank = min(rank, limit + 1)
    return rank


# --- the audit -----------------------------------------------------------------------------------------


@dataclass
class InversionRequest:
    """What the attacker knows: the template, the number and alphabet of unknown tokens, the label (and, for
    scoring only, the true secret)."""

    template: str = DEFAULT_TEMPLATE
    num_unknown: int = 4
    alphabet: str = "digits"
    label: str = ""
    secret: tuple[str, ...] | None = None
    options: InversionOptions = field(default_factory=InversionOptions)

    @classmethod
    def from_spec(cls, spec: CanarySpec, options: InversionOptions, alphabet: str | None = None) -> InversionRequest:
        """The attack on the canary of an insert-canary spec (its template, length, alphabet, label and secret)."""
        return cls(spec.template, len(spec.secret), alphabet or spec.alphabet, spec.label, spec.secret, options)


def invert_canary(model: nn.Module, label_names: list[str], request: InversionRequest) -> dict[str, Any]:
    """Run ModIvA on ``model`` and score it against ``request.secret`` (when given); a JSON-ready dict."""
    tokenizer, _, _ = text_classifier_parts(model)
    if request.label not in label_names:
        raise ConfigError(f"--label '{request.label}' is not a label of the run's model (labels: {label_names})")
    if request.num_unknown < 1:
        raise ConfigError(f"--num-unknown must be >= 1, got {request.num_unknown}")
    label = label_names.index(request.label)
    alphabet = resolve_alphabet(tokenizer, request.alphabet)
    layout = canary_layout(tokenizer, request.template, request.num_unknown, int(getattr(model, "max_length", 512)))
    secret_index: list[int] | None = None
    if request.secret is not None:
        if len(request.secret) != request.num_unknown:
            raise ConfigError(f"the secret has {len(request.secret)} tokens but --num-unknown={request.num_unknown}")
        lookup = {s: i for i, s in enumerate(alphabet.symbols)}
        missing = [s for s in request.secret if s not in lookup]
        if missing:
            raise ConfigError(f"secret symbols {missing} are not in --alphabet '{request.alphabet}'")
        secret_index = [lookup[s] for s in request.secret]
        check_layout_matches(tokenizer, layout, request.template, [alphabet.token_ids[i] for i in secret_index])

    z, final = optimize_distribution(model, alphabet, layout, label, request.options)
    discrete_loss = discrete_losses(model, z.argmax(dim=-1), alphabet, layout, label)
    # the attacker keeps the restart whose read-off tokens the model gives the label most confidently (then the
    # lowest relaxed objective): both are computed from the model alone, without the secret
    best = min(range(len(final)), key=lambda r: (float(discrete_loss[r]), float(final[r])))
    log_probs = torch.log_softmax(z[best] / request.options.temperature_end, dim=-1).double().numpy()
    recovered_index = log_probs.argmax(axis=1).tolist()
    recovered = [alphabet.symbols[i] for i in recovered_index]
    restarts = [[alphabet.symbols[i] for i in row.argmax(dim=-1).tolist()] for row in z]
    num_candidates = len(alphabet) ** request.num_unknown
    sentence = request.template.format(secret=" ".join(recovered))
    result: dict[str, Any] = {
        "template": request.template,
        "label": request.label,
        "alphabet": alphabet.name,
        "alphabet_size": len(alphabet),
        "num_unknown": request.num_unknown,
        "num_candidates": num_candidates,
        "recovered": recovered,
        "recovered_sentence": sentence,
        "label_prob_recovered": math.exp(-float(discrete_loss[best])),
        "attack_loss": float(final[best]),
        "chosen_restart": best,
        "restart_losses": [float(v) for v in final],
        "restart_label_probs": [math.exp(-float(v)) for v in discrete_loss],
        "restart_recovered": restarts,
        "options": asdict(request.options),
    }
    if secret_index is not None:
        rank = secret_rank(log_probs, secret_index)
        top = secret_rank(log_probs, secret_index, limit=10)
        result.update(
            secret=list(request.secret),
            rank=rank,
            exposure=None if rank is None else math.log2(num_candidates) - math.log2(rank),
            **{"success@1": bool(top == 1), "success@10": bool(top is not None and top <= 10)},
            any_restart_recovers=any(r == list(request.secret) for r in restarts),
        )
    return result


def invert_run(
    run_dir: str | Path, request: InversionRequest, out_dir: str | Path, checkpoint: str = "best"
) -> dict[str, Any]:
    """Attack the ``checkpoint`` weights of a finished run; writes ``inversion.json`` to ``out_dir``."""
    run = load_audited_run(run_dir, checkpoint)
    text_classifier_parts(run.model)
    result = {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        **invert_canary(run.model, run.label_names, request),
        **checkpoint_test_accuracy(run),
    }
    write_json_atomic(Path(out_dir) / "inversion.json", result)
    return result
