"""``method=knob_generator``: generation under the control knobs A-D, as a plugin the runner tests and sweeps.

The model is an encoder-decoder (``model=hf_seq2seq``) or a decoder-only language model (``model=hf_causal_lm``),
the data any segmented source -> reference pairs (``data=segments_jsonl``, ``data=topical_chat_grounded``). Testing
(``trainer.test``, which the runner always does) generates for every test example under ``method.knobs``
(:class:`~trustml.knobs.generator.KnobSettings`), batched by ``data.eval_batch_size``, and writes
``generations.jsonl`` into the run directory: each line the example's id, segments, input text, reference, output,
the output with neutral knobs, and per-example metrics. ``results.json`` gets the corpus metrics as ``test/...``:

- overlap and style (:mod:`trustml.knobs.metrics`): ``reference_f1``, ``knowledge_f1`` (to the segment
  ``method.knowledge_segment``, when the data have it), ``question_ratio``, ``distinct_1/2``, ``length``;
- ``reference_perplexity``: ``exp(sum NLL / tokens)`` of the references under the model *with* the knobs;
- ``scorer_perplexity``: ``exp(sum NLL / tokens)`` of the outputs under a separate causal LM (``method.scorer``),
  a fluency judge independent of the generator;
- the paired comparison with neutral knobs (same inputs, same sampling seed): ``paired_changed`` (fraction of
  outputs that differ), and per metric ``m`` in ``reference_f1``, ``knowledge_f1``, ``question``, ``length``:
  ``paired_<m>_higher`` / ``paired_<m>_lower`` (fractions of examples whose ``m`` rose / fell) and
  ``paired_<m>_delta`` (mean change).

PASTA head selection (decoder-only, ``method.knobs.prompt_attention.head_selection=profiled``): before the first
batch, knob A's heads are profiled (:mod:`trustml.knobs.pasta`) on the first ``profile_examples`` test examples (or
those of ``profile_file``), the ``top_k`` best are steered, and the choice goes to ``<generations>.heads.json`` and
``results.json`` (``pasta/heads``, ``pasta/neutral_nll``, ``pasta/best_head_nll``, ``pasta/profile_examples``).

Training: the method can also fit the model first with maximum likelihood on the segments -> reference pairs
(token cross-entropy of the reference, the prompt masked out for a decoder-only model) for ``trainer.max_epochs``
epochs; ``trainer.max_epochs=0`` generates with the weights the model plugin loaded (``model.pretrained``, or a
completed run's weights through ``method.model_run_dir``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from trustml.atomic_files import write_bytes_atomic
from trustml.data.segments_jsonl import SAMPLES_DIR, InputTemplate, read_segment_examples, resolve_sample_path
from trustml.data.topical_chat_grounded import SEQ2SEQ_INPUT_KIND, Seq2SeqExample
from trustml.errors import ConfigError, DataError
from trustml.knobs.generator import CausalKnobGenerator, KnobGenerator, KnobSettings, knob_generator
from trustml.knobs.metrics import distinct_n, mean_length, question_ratio, unigram_f1
from trustml.knobs.pasta import HeadProfile, profile_heads
from trustml.knobs.prompts import TemplateInputBuilder
from trustml.methods.base import OptimizerFactory
from trustml.models.hf_causal_lm import HFCausalLM, HFCausalLMConfig
from trustml.models.hf_seq2seq import IGNORE_INDEX, HFSeq2SeqModel
from trustml.models.segments import CONTROL_SEGMENT, OTHER_SEGMENT
from trustml.plugin import MethodPlugin
from trustml.registry import plugin_class, register
from trustml.run_record import load_model_from_run

#: Per-example metrics compared with the neutral run.
PAIRED_METRICS = ("reference_f1", "knowledge_f1", "question", "length")
GENERATION_DEFAULTS = {"num_beams": 1, "do_sample": False, "max_new_tokens": 32}


def read_control_phrases(path: str) -> list[str]:
    """Knob C's control phrases: the non-blank lines of ``path`` (``sample:<name>``: a packaged ``<name>.txt``)."""
    file = SAMPLES_DIR / f"{path[len('sample:') :]}.txt" if path.startswith("sample:") else Path(path)
    if not file.is_file():
        raise ConfigError(f"method.control_phrases_file={path!r} is not a file; give one phrase per line")
    phrases = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not phrases:
        raise DataError(f"{file} holds no control phrase; write one phrase per line")
    return phrases


@dataclass
class KnobGeneratorConfig:
    """Options of ``method=knob_generator`` (module doc).

    ``knobs``: the knob values (``method.knobs.cross_attention.values.knowledge=5``; ``+`` adds a segment not yet
    listed). ``generation``: ``generate()`` keyword arguments (one output per input). ``model_run_dir``: generate
    with the weights of a completed run (its model plugin options must be the composed ``model``'s).
    ``secondary``/``scorer``: options of the model plugin for knob B's second model / of ``hf_causal_lm`` for the
    scorer (e.g. ``{pretrained: path}``), or ``*_run_dir``: a completed run's model.
    """

    knobs: KnobSettings = field(default_factory=KnobSettings)
    generation: dict[str, Any] = field(default_factory=lambda: dict(GENERATION_DEFAULTS))
    generation_seed: int = 0
    control_phrases_file: str | None = None
    model_run_dir: str | None = None
    secondary: Any = None
    secondary_run_dir: str | None = None
    scorer: Any = None
    scorer_run_dir: str | None = None
    checkpoint: str = "best"
    knowledge_segment: str = "knowledge"
    compare_neutral: bool = True
    score_reference: bool = True
    generations_file: str = "generations.jsonl"

    def __post_init__(self) -> None:
        self.generation = {**GENERATION_DEFAULTS, **dict(self.generation or {})}
        returned = int(self.generation.get("num_return_sequences", 1))
        if returned != 1:
            raise ConfigError(
                f"method.generation.num_return_sequences={returned}: the method keeps one output per input; "
                "sweep method.generation_seed for several samples"
            )
        if int(self.generation["max_new_tokens"]) < 1:
            raise ConfigError(f"method.generation.max_new_tokens={self.generation['max_new_tokens']} must be >= 1")
        for what in ("secondary", "scorer"):
            if getattr(self, what) is not None and getattr(self, f"{what}_run_dir") is not None:
                raise ConfigError(f"give one of method.{what} (model options) and method.{what}_run_dir (a run)")
        if self.control_phrases_file is not None:
            if self.knobs.control_phrases:
                raise ConfigError("give one of method.knobs.control_phrases and method.control_phrases_file")
            self.knobs.control_phrases = read_control_phrases(self.control_phrases_file)
        if not self.generations_file or "/" in self.generations_file:
            raise ConfigError(f"method.generations_file={self.generations_file!r} must be a plain file name")


def _knob_segment_names(knobs: Any) -> set[str]:
    names: set[str] = set()
    for knob in ("cross_attention", "prompt_attention"):
        values = OmegaConf.select(knobs, f"{knob}.values") if isinstance(knobs, DictConfig) else None
        values = values if values is not None else getattr(getattr(knobs, knob, None), "values", {}) or {}
        names |= {str(k) for k, v in dict(values).items() if float(v) != 1.0}
    return names


class GenerationsFile(pl.Callback):
    """Writes the method's generation rows (``generation_rows``) as JSON lines to ``path`` when testing ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.profile: HeadProfile | None = None

    @property
    def profile_path(self) -> Path:
        """Where the PASTA head profile goes: ``<generations stem>.heads.json`` beside the generations."""
        return self.path.with_name(f"{self.path.stem}.heads.json")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json

        rows = getattr(pl_module, "generation_rows", None)
        if rows is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_bytes_atomic(self.path, text.encode("utf-8"))
        self.profile = getattr(pl_module, "head_profile", None)
        if self.profile is not None:
            record = json.dumps(self.profile.as_dict(), indent=1) + "\n"
            write_bytes_atomic(self.profile_path, record.encode("utf-8"))

    def final_results(self) -> dict[str, Any]:
        """The steered heads PASTA profiling chose (``pasta/heads``: ``[layer, head]`` pairs, best first), its
        neutral and best per-token reference NLL, for ``results.json``; nothing without profiling."""
        if self.profile is None:
            return {}
        best = self.profile.scores[tuple(self.profile.heads[0])]
        return {
            "pasta/heads": self.profile.heads,
            "pasta/neutral_nll": self.profile.neutral_score,
            "pasta/best_head_nll": best,
            "pasta/profile_examples": self.profile.examples,
        }


@register("method", "knob_generator", dataclass=KnobGeneratorConfig)
class KnobGeneratorMethod(MethodPlugin, pl.LightningModule):
    """Generation with knobs A-D on an encoder-decoder or a decoder-only LM; optional maximum-likelihood training."""

    supported_input_kinds: ClassVar[frozenset[str]] = frozenset({SEQ2SEQ_INPUT_KIND})

    def __init__(
        self,
        config: KnobGeneratorConfig,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        if config.model_run_dir is not None:
            # the run's model comes back in eval mode; training it (trainer.max_epochs > 0) needs its dropout back
            model = self._run_model(config.model_run_dir, type(model), "method.model_run_dir").train()
        self.model = model
        self.optimizer_factory = optimizer
        self.causal = isinstance(model, HFCausalLM)
        self.secondary = self._secondary(model)
        self.scorer = self._scorer()
        for frozen in (self.secondary, self.scorer):
            if frozen is not None:
                frozen.eval().requires_grad_(False)
        self.generation_rows: list[dict[str, Any]] = []
        self._builder: Any = None
        self._generators: dict[str, KnobGenerator | CausalKnobGenerator] = {}
        self.head_profile: HeadProfile | None = None

    # --- building -------------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse models that are not Hugging Face generators, knobs of the other family, knob segments the data
        do not have, and training without training data."""
        model_cls = plugin_class("model", cfg.model)
        if not issubclass(model_cls, HFSeq2SeqModel | HFCausalLM):
            raise ConfigError(
                f"method=knob_generator generates with model=hf_seq2seq or model=hf_causal_lm, not "
                f"model._target_={cfg.model._target_}"
            )
        knobs = cfg.method.knobs
        if issubclass(model_cls, HFCausalLM) and _non_neutral(knobs, "cross_attention"):
            raise ConfigError(
                "method.knobs.cross_attention biases cross-attention, which a decoder-only model (model=hf_causal_lm) "
                "does not have; use method.knobs.prompt_attention to bias its prompt segments"
            )
        if issubclass(model_cls, HFSeq2SeqModel) and _non_neutral(knobs, "prompt_attention"):
            raise ConfigError(
                "method.knobs.prompt_attention is knob A of decoder-only models; an encoder-decoder "
                "(model=hf_seq2seq) reads its segments through cross-attention: use method.knobs.cross_attention"
            )
        names = _data_segment_names(cfg)
        if names is not None:
            unknown = sorted(_knob_segment_names(knobs) - set(names) - {OTHER_SEGMENT, CONTROL_SEGMENT})
            if unknown:
                raise ConfigError(
                    f"method.knobs name segment(s) {unknown} that the data do not have; the data's segments are "
                    f"{list(names)} (plus '{CONTROL_SEGMENT}', the appended control code)"
                )
        epochs = OmegaConf.select(cfg, "trainer.max_epochs")
        smoke = bool(OmegaConf.select(cfg, "trainer.fast_dev_run", default=False))  # one batch: a build check
        if epochs not in (0, None) and not smoke and OmegaConf.select(cfg, "data.train_path", default="") is None:
            raise ConfigError(
                f"trainer.max_epochs={epochs} trains the model, but data.train_path is unset (train and validation "
                "would be the test lines); set data.train_path or trainer.max_epochs=0 to generate only"
            )

    @classmethod
    def runtime_callbacks(cls, cfg: DictConfig, datamodule: Any) -> list[Any]:
        """:class:`GenerationsFile` into the run directory."""
        return [GenerationsFile(Path(cfg.paths.output_dir) / str(cfg.method.generations_file))]

    def _run_model(self, run_dir: str, expected: type, option: str) -> nn.Module:
        model, _ = load_model_from_run(run_dir, self.config.checkpoint)
        if not isinstance(model, expected):
            raise ConfigError(
                f"{option}={run_dir} holds a {type(model).__name__}, but this run's model is a {expected.__name__}; "
                "give a run of the same model plugin"
            )
        return model

    def _secondary(self, model: nn.Module) -> nn.Module | None:
        c = self.config
        if c.secondary_run_dir is not None:
            return self._run_model(c.secondary_run_dir, type(model), "method.secondary_run_dir")
        if c.secondary is None:
            if c.knobs.mixing_weight > 0.0:
                raise ConfigError(
                    f"method.knobs.mixing_weight={c.knobs.mixing_weight} mixes with a second model: set "
                    "method.secondary_run_dir (a completed run) or method.secondary (model options)"
                )
            return None
        options = dict(
            OmegaConf.to_container(c.secondary, resolve=True) if isinstance(c.secondary, DictConfig) else c.secondary
        )
        return type(model)(type(model.config)(**options))

    def _scorer(self) -> nn.Module | None:
        c = self.config
        if c.scorer_run_dir is not None:
            return self._run_model(c.scorer_run_dir, HFCausalLM, "method.scorer_run_dir")
        if c.scorer is None:
            return None
        options = dict(OmegaConf.to_container(c.scorer, resolve=True) if isinstance(c.scorer, DictConfig) else c.scorer)
        return HFCausalLM(HFCausalLMConfig(**options))

    def builder(self, example: Seq2SeqExample) -> Any:
        """The input builder: the data's template (``data=segments_jsonl``), else the encoder-decoder's own
        Topical-Chat builder, else a ``name: {name}`` template over the example's segments."""
        if self._builder is not None:
            return self._builder
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        template = getattr(datamodule, "input_template", None)
        options = getattr(datamodule, "config", None)
        cuts = dict(getattr(options, "max_segment_tokens", {}) or {})
        keep_last = list(getattr(options, "keep_last", []) or [])
        if template is None and not self.causal:
            self._builder = self.model.builder
            return self._builder
        template = template or InputTemplate.from_segment_names(list(example.segments))
        if self.causal:
            new_tokens = int(self.config.generation["max_new_tokens"])
            self._builder = TemplateInputBuilder(
                self.model.tokenizer,
                template,
                layout="prompt",
                max_length=self.model.max_length - new_tokens,
                max_segment_tokens=cuts,
                keep_last=keep_last,
                bos_token_id=self.model.special_ids["bos_token_id"],
                length_hint=f" (model.max_length={self.model.max_length} minus {new_tokens} new tokens)",
            )
        else:
            self._builder = TemplateInputBuilder(
                self.model.tokenizer,
                template,
                layout="encoder",
                max_length=self.model.config.max_source_length,
                max_segment_tokens=cuts,
                keep_last=keep_last,
                length_hint=" (model.max_source_length)",
            )
        return self._builder

    def _sources(self, examples: list[Seq2SeqExample]) -> dict[str, Tensor]:
        builder = self.builder(examples[0])
        segments = [e.segments for e in examples]
        if isinstance(builder, TemplateInputBuilder):
            names = [f"example {e.conversation_id!r} (line {e.turn_index})" for e in examples]
            encoded = builder(segments, names)
        else:
            encoded = builder(segments)
        return {k: v.to(self.device) for k, v in encoded.items()}

    def _generator(self, neutral: bool = False) -> KnobGenerator | CausalKnobGenerator:
        """The generator of the configured knobs (or of neutral ones), built once per test run (knob C encodes its
        control phrases then)."""
        key = "neutral" if neutral else "knobs"
        if key not in self._generators:
            self._generators[key] = knob_generator(
                self.model.network,
                self.model.tokenizer,
                KnobSettings() if neutral else self._knob_settings(),
                vocabulary=self._builder.vocabulary if self._builder is not None else None,
                secondary=self.secondary.network if self.secondary is not None else None,
            )
        return self._generators[key]

    def _knob_settings(self) -> KnobSettings:
        """The configured knobs, knob A's heads replaced by the profiled ones under ``head_selection='profiled'``."""
        settings = self.config.knobs
        if settings.prompt_attention.head_selection != "profiled":
            return settings
        if self.head_profile is None:
            raise RuntimeError("PASTA head profiling has not run; generate_batch profiles before generating")
        return replace(settings, prompt_attention=self.head_profile.with_heads(settings.prompt_attention))

    def _profiling_examples(self) -> list[Seq2SeqExample]:
        """PASTA's profiling examples: the first ``profile_examples`` of ``profile_file`` (read with the data's
        template and reference field), else of the data being generated for."""
        rule = self.config.knobs.prompt_attention
        wanted = rule.profile_examples
        datamodule = getattr(self.trainer, "datamodule", None)
        if rule.profile_file is not None:
            option = "method.knobs.prompt_attention.profile_file"
            template = getattr(datamodule, "input_template", None)
            if template is None:
                raise ConfigError(f"{option} is a segments JSONL file read with data=segments_jsonl's template")
            c = datamodule.config
            path = resolve_sample_path(rule.profile_file, option)
            return read_segment_examples(path, template, c.target, c.id_field, c.encoding)[:wanted]
        loaders = self.trainer.predict_dataloaders if self.trainer.predicting else self.trainer.test_dataloaders
        examples: list[Seq2SeqExample] = []
        for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
            for batch in loader:
                examples += list(batch["x"])
                if len(examples) >= wanted:
                    return examples[:wanted]
        return examples

    def profile(self, examples: list[Seq2SeqExample]) -> HeadProfile:
        """PASTA head profiling (:func:`~trustml.knobs.pasta.profile_heads`) on ``examples``, batched as the data
        batch evaluation (``data.eval_batch_size``, else 8); the result is kept in :attr:`head_profile`."""
        if not self.causal:
            raise ConfigError(
                "method.knobs.prompt_attention.head_selection='profiled' selects heads of a decoder-only model "
                "(model=hf_causal_lm)"
            )
        missing = [e.conversation_id for e in examples if not e.target]
        if not examples or missing:
            raise DataError(
                f"PASTA profiling needs examples with references; {'none given' if not examples else missing} "
                "(set method.knobs.prompt_attention.profile_file to a file with references)"
            )
        size = int(getattr(getattr(self.trainer, "datamodule", None), "eval_batch_size", None) or 8)
        batches = []
        for start in range(0, len(examples), size):
            chunk = examples[start : start + size]
            batches.append({**self._sources(chunk), "targets": self._causal_targets([e.target for e in chunk])})
        self.head_profile = profile_heads(
            self.model.network,
            self.model.tokenizer,
            self.config.knobs.prompt_attention,
            self._builder.vocabulary,
            batches,
        )
        return self.head_profile

    def _generate_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.config.generation)
        if self.causal:
            ids = self.model.special_ids
            kwargs.setdefault("pad_token_id", ids["pad_token_id"])
            kwargs.setdefault("eos_token_id", ids["eos_token_id"])
        return kwargs

    # --- targets and likelihoods --------------------------------------------------------------------
    def _causal_targets(self, texts: list[str]) -> Tensor:
        """Reference token ids ``[B, T]`` + end token, ``-100`` at padding (a prompt's continuation)."""
        tokenizer, eos = self.model.tokenizer, self.model.special_ids["eos_token_id"]
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
        length = max(len(r) for r in rows)
        out = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(self.device)

    def _reference_nll(self, generator: Any, sources: dict[str, Tensor], examples: list[Seq2SeqExample]) -> Tensor:
        """Per-token NLL ``[B, T]`` of the references under ``generator``'s knobs (0 at padding) and the mask."""
        if self.causal:
            targets = self._causal_targets([e.target for e in examples])
            return generator.reference_token_nll(targets=targets, **sources), targets != IGNORE_INDEX
        labels = self.model.encode_targets([e.target for e in examples]).to(self.device)
        return generator.reference_token_nll(labels=labels, **sources), labels != IGNORE_INDEX

    @torch.no_grad()
    def _scorer_nll(self, texts: list[str]) -> tuple[list[float], list[int]]:
        """Sum of token NLLs and token counts of each text under the scorer LM (``[CLS] text [SEP]``)."""
        encoded = self.scorer.encode(texts)
        ids, mask = encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
        logits = self.scorer.network(input_ids=ids, attention_mask=mask, return_dict=True).logits.float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
        nll = nll.masked_fill(labels == IGNORE_INDEX, 0.0)
        return nll.sum(1).tolist(), (labels != IGNORE_INDEX).sum(1).tolist()

    # --- generation -------------------------------------------------------------------------------
    def _decode(self, tokens: Tensor) -> list[str]:
        return [t.strip() for t in self.model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def _outputs(self, neutral: bool, sources: dict[str, Tensor], seed: int) -> tuple[list[str], Any]:
        generator = self._generator(neutral)
        torch.manual_seed(seed)  # the same sampling seed with and without knobs: a paired comparison
        return self._decode(generator.generate(**sources, **self._generate_kwargs())), generator

    def generate_batch(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Generation rows of one batch (module doc): outputs under the knobs and neutral, per-example metrics."""
        examples: list[Seq2SeqExample] = list(batch["x"])
        sources = self._sources(examples)
        if self.config.knobs.prompt_attention.head_selection == "profiled" and self.head_profile is None:
            self.profile(self._profiling_examples())
        seed = int(self.config.generation_seed) + batch_idx
        settings = self.config.knobs
        outputs, generator = self._outputs(False, sources, seed)
        neutral = outputs
        if self.config.compare_neutral and not _is_neutral(settings):
            neutral, _ = self._outputs(True, sources, seed)
        rows = []
        reference_nll = token_counts = None
        if self.config.score_reference and all(e.target for e in examples):
            nll, mask = self._reference_nll(generator, sources, examples)
            reference_nll, token_counts = nll.sum(1).tolist(), mask.sum(1).tolist()
        scorer_nll = scorer_tokens = None
        if self.scorer is not None:
            scorer_nll, scorer_tokens = self._scorer_nll(outputs)
        knowledge = self.config.knowledge_segment
        inputs = self.model.tokenizer.batch_decode(sources["input_ids"], skip_special_tokens=True)
        for i, example in enumerate(examples):
            metrics = example_metrics(outputs[i], example, knowledge)
            neutral_metrics = example_metrics(neutral[i], example, knowledge)
            if reference_nll is not None:
                metrics["reference_nll"], metrics["reference_tokens"] = reference_nll[i], token_counts[i]
            if scorer_nll is not None:
                metrics["scorer_nll"], metrics["scorer_tokens"] = scorer_nll[i], scorer_tokens[i]
            rows.append(
                {
                    "index": int(batch["index"][i]),
                    "id": example.conversation_id,
                    "segments": dict(example.segments),
                    "input": inputs[i].strip(),
                    "reference": example.target,
                    "output": outputs[i],
                    "neutral_output": neutral[i],
                    "changed": outputs[i] != neutral[i],
                    "metrics": metrics,
                    "neutral_metrics": neutral_metrics,
                }
            )
        return rows

    # --- Lightning hooks ----------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self.generation_rows = []
        self._generators.clear()  # the weights may have changed since (training, a reloaded checkpoint)
        self.head_profile = None

    def on_predict_epoch_start(self) -> None:
        self._generators.clear()
        self.head_profile = None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.generation_rows.extend(self.generate_batch(batch, batch_idx))

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        return self.generate_batch(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        for name, value in corpus_metrics(self.generation_rows).items():
            self.log(f"test/{name}", value, batch_size=len(self.generation_rows))

    def _teacher_forced(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        examples: list[Seq2SeqExample] = list(batch["x"])
        sources = self._sources(examples)
        if not self.causal:
            labels = self.model.encode_targets([e.target for e in examples]).to(self.device)
            logits = self.model(sources["input_ids"], sources["attention_mask"], labels)
            return logits, labels
        targets = self._causal_targets([e.target for e in examples])
        mask = torch.cat([sources["attention_mask"], (targets != IGNORE_INDEX).long()], dim=1)
        ids = torch.cat([sources["input_ids"], targets.clamp(min=0)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model.network(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        prompt = sources["input_ids"].shape[1]
        return logits[:, prompt - 1 : -1], targets

    def _step(self, split: str, batch: dict[str, Any]) -> Tensor:
        logits, labels = self._teacher_forced(batch)
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
        mask = labels != IGNORE_INDEX
        count = mask.sum().clamp(min=1)
        loss = (nll * mask).sum() / count
        tokens = int(count)
        self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
        if split != "train":
            accuracy = ((logits.argmax(-1) == labels) & mask).sum().float() / count
            self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step("val", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])


def _is_neutral(settings: KnobSettings) -> bool:
    return (
        settings.cross_attention.is_neutral
        and settings.prompt_attention.is_neutral
        and settings.self_attention.is_neutral
        and settings.mixing_weight == 0.0
        and not settings.control_phrases
    )


def _non_neutral(knobs: Any, name: str) -> bool:
    values = OmegaConf.select(knobs, f"{name}.values") if isinstance(knobs, DictConfig) else None
    return any(float(v) != 1.0 for v in dict(values or {}).values())


def _data_segment_names(cfg: DictConfig) -> tuple[str, ...] | None:
    """The segment names the composed data plugin yields, when known before loading (else None)."""
    template = OmegaConf.select(cfg, "data.template")
    if isinstance(template, str):
        return InputTemplate.parse(template).segment_names
    if str(OmegaConf.select(cfg, "data._target_", default="")).endswith("TopicalChatGrounded"):
        return ("knowledge", "history")
    return None


def example_metrics(output: str, example: Seq2SeqExample, knowledge_segment: str) -> dict[str, float]:
    """One output's ``reference_f1`` (unigram F1 to the reference; when there is one), ``knowledge_f1`` (to the
    knowledge segment; when the example has it), ``question`` (1 if it contains '?') and ``length`` (words)."""
    metrics: dict[str, float] = {"question": float("?" in output), "length": float(len(output.split()))}
    if example.target:
        metrics["reference_f1"] = unigram_f1(output, example.target)
    if knowledge_segment in example.segments:
        metrics["knowledge_f1"] = unigram_f1(output, example.segments[knowledge_segment])
    return metrics


def corpus_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Corpus metrics of generation rows (module doc)."""
    if not rows:
        raise DataError("no test examples to generate for; check the data's test split")
    outputs = [r["output"] for r in rows]
    metrics = {
        "examples": float(len(rows)),
        "question_ratio": question_ratio(outputs),
        "distinct_1": distinct_n(outputs, 1),
        "distinct_2": distinct_n(outputs, 2),
        "length": mean_length(outputs),
    }
    for name in ("reference_f1", "knowledge_f1"):
        values = [r["metrics"][name] for r in rows if name in r["metrics"]]
        if len(values) == len(rows):
            metrics[name] = sum(values) / len(values)
    for prefix in ("reference", "scorer"):
        nll = [r["metrics"].get(f"{prefix}_nll") for r in rows]
        if all(v is not None for v in nll):
            tokens = sum(r["metrics"][f"{prefix}_tokens"] for r in rows)
            if tokens > 0:
                metrics[f"{prefix}_perplexity"] = math.exp(min(sum(nll) / tokens, 50.0))
    metrics["paired_changed"] = sum(r["changed"] for r in rows) / len(rows)
    for name in PAIRED_METRICS:
        pairs = [(r["metrics"][name], r["neutral_metrics"][name]) for r in rows if name in r["metrics"]]
        if len(pairs) != len(rows):
            continue
        metrics[f"paired_{name}_higher"] = sum(a > b for a, b in pairs) / len(pairs)
        metrics[f"paired_{name}_lower"] = sum(a < b for a, b in pairs) / len(pairs)
        metrics[f"paired_{name}_delta"] = sum(a - b for a, b in pairs) / len(pairs)
    return metrics
