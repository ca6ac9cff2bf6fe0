"""``method=distill_lm``: a causal LM student distilled from a teacher LM, with counterfactual role reversal.

Knowledge distillation (Hinton et al., 2015) per predicted token::

    L = kl_weight * T^2 * KL( q_T(. | x_<t) || p_student,T(. | x_<t) ) + hard_weight * CE(p_student, x_t)

``q_T`` is the teacher's next-token distribution at temperature ``T``, optionally role-reversed against gender
bias (Gupta et al., 2022; :mod:`trustml.losses.role_reversal`):

- ``counterfactual.teacher=mean|max|geometric``: for every gendered word ``w`` of the word-pair list,
  ``q(w|x) ~ f(p(w|x), p(w'|x'))`` with ``x'`` the context with every gendered token swapped; then renormalised.
  ``none`` (default) distils the plain teacher.
- ``counterfactual.augment=true``: counterfactual data augmentation; each training batch also holds the
  gender-swapped copy of each of its texts that contains a listed word (sentence-level swap of
  :func:`trustml.fairness.counterfactual.swap_protected_words`, capitalisation kept), so every step trains on
  both.

Word pairs and tokens (the rule): the teacher modification swaps *tokens*, so positions stay aligned; it uses the
pairs of :func:`~trustml.fairness.counterfactual.bijective_word_pairs` whose two words are each one token of the
tokenizer (:func:`~trustml.fairness.counterfactual.single_token_pairs`; multi-token pairs are skipped and counted,
the run logs how many are usable: ``distill/usable_pairs``). CDA swaps words in the text, so it uses every pair.
A word that the tokenizer reads as its unknown token is an error naming ``method.counterfactual.pairs_path``.

The teacher is the best (or ``teacher_checkpoint``) network of a completed ``trustml`` run
(``teacher_run_dir``) or a Hugging Face causal LM name/path (``teacher_pretrained``). It must read text with the
student's tokenizer: the same token -> id map and output size, else a :class:`~trustml.errors.ConfigError`
(a student that trains its own tokenizer adopts the teacher's trained one instead). The data are static, so with
``cache_teacher=true`` (default) the targets of every training text (and of its counterfactual copy) are computed
once before training, kept as their ``teacher_top_k`` most probable tokens plus the rest's mass, and looked up by
sample id; an epoch then costs about what ``method=lm`` costs (``experiments/role_reversal/bench_distill.py``).
``cache_teacher=false`` runs the teacher on every batch (with the same top-k targets).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.fairness.counterfactual import load_word_pairs, single_token_pairs, swap_protected_words
from trustml.losses.role_reversal import (
    COMBINATIONS,
    distillation_token_loss,
    pair_permutation,
    role_reversal_log_probs,
    swap_tokens,
    top_k_targets,
)
from trustml.methods.base import OptimizerFactory
from trustml.methods.lm import CausalLMBase
from trustml.methods.old_model import check_run_dirs
from trustml.models.hf_causal_lm import HFCausalLM, HFCausalLMConfig
from trustml.registry import register
from trustml.run_record import load_model_from_run

log = logging.getLogger(__name__)


@dataclass
class CounterfactualOptions:
    """``method.counterfactual.*``: CDA (``augment``) and the teacher's role reversal (``teacher``)."""

    augment: bool = False
    teacher: str = "none"
    # word-pair YAML (format of trustml/fairness/data/gender_pairs.yaml); null = the shipped list
    pairs_path: str | None = None


@dataclass
class DistillLMConfig:
    """Options of ``method=distill_lm`` (module doc)."""

    teacher_run_dir: str | None = None
    teacher_pretrained: str | None = None
    teacher_checkpoint: str = "best"
    temperature: float = 2.0
    kl_weight: float = 1.0
    hard_weight: float = 0.5
    cache_teacher: bool = True
    teacher_top_k: int = 32
    teacher_batch_size: int = 64
    counterfactual: CounterfactualOptions = field(default_factory=CounterfactualOptions)

    def __post_init__(self) -> None:
        if (self.teacher_run_dir is None) == (self.teacher_pretrained is None):
            raise ConfigError(
                "method=distill_lm needs exactly one of method.teacher_run_dir (a completed trustml run of "
                "model=hf_causal_lm) and method.teacher_pretrained (a Hugging Face causal LM name or path)"
            )
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature={self.temperature} must be > 0")
        if self.kl_weight < 0 or self.hard_weight < 0 or self.kl_weight + self.hard_weight == 0:
            raise ConfigError(
                f"method.kl_weight={self.kl_weight} and method.hard_weight={self.hard_weight} must be >= 0, not both 0"
            )
        if self.teacher_top_k < 1 or self.teacher_batch_size < 1:
            raise ConfigError("method.teacher_top_k and method.teacher_batch_size must be >= 1")
        cf = self.counterfactual
        if isinstance(cf, dict):
            cf = self.counterfactual = CounterfactualOptions(**cf)
        if cf.teacher not in COMBINATIONS:
            raise ConfigError(
                f"method.counterfactual.teacher={cf.teacher!r} is unknown; use one of {list(COMBINATIONS)}"
            )


Targets = tuple[Tensor, Tensor]


@register("method", "distill_lm", dataclass=DistillLMConfig)
class DistillLM(CausalLMBase):
    """Distils ``model`` (the student) towards a frozen teacher LM; see the module doc."""

    method_name = "distill_lm"

    def __init__(
        self, config: DistillLMConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int = 0
    ) -> None:
        super().__init__(config, model=model, optimizer=optimizer, num_classes=num_classes)
        c = config
        if c.teacher_run_dir is not None:
            check_run_dirs([c.teacher_run_dir], "method.teacher_run_dir", c.teacher_checkpoint)
        self.temperature, self.kl_weight, self.hard_weight = c.temperature, c.kl_weight, c.hard_weight
        self.word_pairs = load_word_pairs(c.counterfactual.pairs_path)
        self.cache: dict[int, Targets] = {}
        self.swapped: dict[int, str | None] = {}  # cache key of a text -> its counterfactual (None: unchanged)
        self.pair_summary: dict[str, Any] = {}
        self.cache_seconds = 0.0
        self.sigma: Tensor | None = None
        self.gendered: Tensor | None = None
        # the teacher is a frozen input, not part of the trained module (out of checkpoints and optimizers)
        object.__setattr__(self, "teacher", None)

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Causal LM student, torch optimizer, and a completed teacher run."""
        super().validate_config(cfg)
        method = cfg.method
        if method.teacher_run_dir is not None:
            check_run_dirs([method.teacher_run_dir], "method.teacher_run_dir", str(method.teacher_checkpoint))

    # --- the teacher --------------------------------------------------------------------------------
    def load_teacher(self) -> HFCausalLM:
        """The frozen teacher, checked to read text with the student's tokenizer (module doc)."""
        c = self.config
        if c.teacher_run_dir is not None:
            teacher, _ = load_model_from_run(c.teacher_run_dir, c.teacher_checkpoint)
            where = f"method.teacher_run_dir={c.teacher_run_dir}"
        else:
            teacher = HFCausalLM(HFCausalLMConfig(pretrained=c.teacher_pretrained, max_length=self.model.max_length))
            where = f"method.teacher_pretrained={c.teacher_pretrained}"
        if not isinstance(teacher, HFCausalLM):
            raise ConfigError(f"{where} holds a {type(teacher).__name__}, not a causal LM (model=hf_causal_lm)")
        if getattr(self.model, "needs_tokenizer", False) and teacher.tokenizer_json:
            self.model.set_tokenizer_json(teacher.tokenizer_json)  # the student adopts the teacher's trained vocabulary
        check_same_vocabulary(teacher, self.model, where)
        return teacher.eval().requires_grad_(False)

    def setup(self, stage: str) -> None:
        """Load the teacher (the student may adopt its tokenizer), then the student's tokenizer and token pairs."""
        if self.teacher is None:
            object.__setattr__(self, "teacher", self.load_teacher())
        super().setup(stage)
        cf = self.config.counterfactual
        if cf.teacher != "none" and self.sigma is None:
            option = "method.counterfactual.pairs_path"
            token_pairs = single_token_pairs(self.model.tokenizer, self.word_pairs, option)
            if not token_pairs.ids:
                raise ConfigError(
                    f"method.counterfactual.teacher={cf.teacher}: no word pair of {option} is a pair of single tokens "
                    "of this tokenizer, so there is nothing to reverse; use a larger vocabulary or another pair list"
                )
            self.pair_summary = token_pairs.summary()
            log.info("role reversal over %d single-token word pairs", len(token_pairs.ids))
            self.sigma = pair_permutation(self.model.vocab_size, token_pairs.ids)
            self.gendered = torch.tensor(sorted({i for pair in token_pairs.ids for i in pair}), dtype=torch.long)

    @torch.no_grad()
    def teacher_targets(self, texts: list[str]) -> list[Targets]:
        """Per text: the top-k ids ``[L-1, K]`` and log-probabilities of the (role-reversed) teacher at ``T``."""
        teacher = self.teacher.to(self.device)
        input_ids, attention_mask = self.tokens(texts)
        log_p = F.log_softmax(teacher(input_ids, attention_mask)[:, :-1].float() / self.temperature, dim=-1)
        mode = self.config.counterfactual.teacher
        if mode != "none" and self.sigma is not None and self.gendered is not None:
            cf_ids = swap_tokens(input_ids, self.sigma)
            log_p_cf = F.log_softmax(teacher(cf_ids, attention_mask)[:, :-1].float() / self.temperature, dim=-1)
            log_p = role_reversal_log_probs(log_p, log_p_cf, self.gendered, self.sigma, mode)
        ids, values = top_k_targets(log_p, self.config.teacher_top_k)
        lengths = attention_mask.sum(1) - 1
        return [
            (ids[i, :n].to(torch.int32).cpu(), values[i, :n].to(torch.float16).cpu())
            for i, n in enumerate(lengths.tolist())
        ]

    # --- training data: originals and counterfactual copies ------------------------------------------------
    def training_texts(self, texts: list[str], index: Tensor) -> tuple[list[str], list[int]]:
        """The batch's texts and cache keys (``2 id`` for a text, ``2 id + 1`` for its counterfactual copy)."""
        keys = [2 * int(i) for i in index.tolist()]
        if not self.config.counterfactual.augment:
            return list(texts), keys
        out, out_keys = list(texts), list(keys)
        for text, key in zip(texts, keys, strict=True):
            if key not in self.swapped:  # the data are static: each text is swapped once
                swapped = swap_protected_words(text, self.word_pairs)
                self.swapped[key] = swapped.text if swapped.changed else None
            if self.swapped[key] is not None:
                out.append(self.swapped[key])
                out_keys.append(key + 1)
        return out, out_keys

    def on_fit_start(self) -> None:
        """Cache the teacher's targets of every training text and counterfactual copy (``cache_teacher=true``)."""
        if not self.config.cache_teacher:
            return
        split = self.trainer.datamodule.splits["train"]
        texts, keys = self.training_texts(list(split.inputs), split.index)
        todo = [(t, k) for t, k in zip(texts, keys, strict=True) if k not in self.cache]
        start = time.perf_counter()
        size = self.config.teacher_batch_size
        order = sorted(range(len(todo)), key=lambda j: len(todo[j][0]))  # similar lengths batch with less padding
        for begin in range(0, len(order), size):
            chunk = [todo[j] for j in order[begin : begin + size]]
            for (_, key), target in zip(chunk, self.teacher_targets([t for t, _ in chunk]), strict=True):
                self.cache[key] = target
        self.cache_seconds += time.perf_counter() - start
        log.info("teacher targets of %d texts cached in %.1fs", len(todo), time.perf_counter() - start)

    def batch_targets(self, texts: list[str], keys: list[int], length: int) -> Targets:
        """Targets ``[B, length, K]`` of the batch (cached or computed now), padded with token 0 / log-prob 0."""
        if self.config.cache_teacher:
            missing = [j for j, k in enumerate(keys) if k not in self.cache]
            if missing:
                for j, target in zip(missing, self.teacher_targets([texts[j] for j in missing]), strict=True):
                    self.cache[keys[j]] = target
            targets = [self.cache[k] for k in keys]
        else:
            targets = self.teacher_targets(texts)
        k = targets[0][0].shape[-1]
        ids = torch.zeros(len(targets), length, k, dtype=torch.int32)
        values = torch.zeros(len(targets), length, k, dtype=torch.float16)
        for row, (t_ids, t_values) in enumerate(targets):
            ids[row, : len(t_ids)] = t_ids
            values[row, : len(t_values)] = t_values
        return ids.to(self.device, non_blocking=True), values.to(self.device, non_blocking=True)

    def training_loss(self, batch: dict[str, Any]) -> tuple[Tensor, int]:
        """Mean distillation loss per predicted token over the batch (and its counterfactual copies)."""
        texts, keys = self.training_texts(batch["x"], batch["index"])
        logits, labels = self.lm_outputs(texts)
        ids, values = self.batch_targets(texts, keys, labels.shape[1])
        loss, mask = distillation_token_loss(
            logits, labels, ids, values, self.temperature, self.kl_weight, self.hard_weight
        )
        count = mask.sum()
        return loss.sum() / count.clamp(min=1), int(count)

    def on_train_epoch_end(self) -> None:
        if self.pair_summary:
            self.log("distill/usable_pairs", float(self.pair_summary["usable_pairs"]))
        self.log("distill/cached_texts", float(len(self.cache)))


def check_same_vocabulary(teacher: HFCausalLM, student: nn.Module, where: str) -> None:
    """Refuse a teacher whose token -> id map or output size differs from the student's (ConfigError naming
    ``where``): their next-token distributions would be over different things."""
    t_vocab, s_vocab = teacher.vocabulary, student.vocabulary
    if t_vocab != s_vocab or teacher.vocab_size != student.vocab_size:
        only_t = sorted(set(t_vocab) - set(s_vocab))[:5]
        only_s = sorted(set(s_vocab) - set(t_vocab))[:5]
        moved = [tok for tok in set(t_vocab) & set(s_vocab) if t_vocab[tok] != s_vocab[tok]][:5]
        raise ConfigError(
            f"{where}: the teacher's vocabulary ({len(t_vocab)} tokens, {teacher.vocab_size} outputs, tokenizer "
            f"{teacher.source}) differs from the student's ({len(s_vocab)} tokens, {student.vocab_size} outputs, "
            f"{student.source}): only in the teacher {only_t}, only in the student {only_s}, other ids {moved}; "
            "give the student the teacher's tokenizer (model.tokenizer) and vocabulary size"
        )
