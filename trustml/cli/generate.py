"""``trustml-generate``: generate knowledge-grounded responses with control knobs and score them (Hydra app).

Loads a trained encoder-decoder (``model.run_dir`` of a ``method=seq2seq`` run, ``model.pretrained`` a name or
``save_pretrained`` folder, or ``model.random_init_config`` for tests), generates for Topical-Chat turns with the
knobs of ``knobs`` (:class:`~trustml.knobs.KnobSettings`; presets in ``generate/knobs``), optionally with its decoder
self-attention swapped for a donor's (``swap.donor``: :class:`SwapOptions`), and writes
``generations.jsonl``, ``results.json`` (metrics) and ``run.json`` (the run record) into its run directory under
``paths.log_dir`` (:mod:`trustml.cli.task`: exit codes as ``trustml --help`` lists them). Sweeps:
``-m knobs.mixing_weight=0,0.5``.

The same generation runs through the runner as ``trustml method=knob_generator`` (any segmented data, decoder-only
models too, paired and scorer metrics; it gives this app's numbers for the same model, turns and knobs): this app
stays for its Topical-Chat presets (``generate/knobs``) and the decoder self-attention swap (``swap.donor``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from trustml.cli.task import Job, TaskApp, TaskResult, run_app
from trustml.config_schema import register_config_support
from trustml.data.topical_chat_files import read_grounded_turns
from trustml.data.topical_chat_grounded import grounded_examples
from trustml.errors import ConfigError
from trustml.knobs.evaluation import generate_and_score
from trustml.knobs.generator import KnobGenerator, KnobSettings
from trustml.models.attention_transplant import swap_self_attention
from trustml.models.hf_seq2seq import HFSeq2SeqConfig, HFSeq2SeqModel
from trustml.run_record import load_model_from_run


@dataclass
class ModelSource(HFSeq2SeqConfig):
    """Where a model comes from: ``run_dir`` (a completed ``method=seq2seq`` run; ``checkpoint`` best/last), else
    the ``model=hf_seq2seq`` options (``pretrained`` or ``random_init_config``). All unset: no model."""

    run_dir: str | None = None
    checkpoint: str = "best"

    def __post_init__(self) -> None:
        """No checks here (a source may be unset or a run): :func:`load_seq2seq` checks the ``hf_seq2seq`` options
        when it builds a model from them."""

    @property
    def is_set(self) -> bool:
        """Whether any source is given."""
        return self.run_dir is not None or self.pretrained is not None or self.random_init_config is not None


@dataclass
class GenerateData:
    """Which Topical-Chat turns to respond to."""

    data_dir: str = "${paths.shared_data_dir}/topical_chat"
    split: str = "test_freq"
    history_turns: int = 3
    turn_separator: str = " "
    max_examples: int | None = 200


@dataclass
class SwapOptions:
    """Swap the model's decoder self-attention before generating (the swap test of ``method=attention_swap``).

    ``donor``: null (no swap), ``random`` (re-drawn from the model's initialiser with ``seed``), a completed trustml
    run directory or a Hugging Face name/path (encoder-decoder, decoder-only LM, or an encoder with the same
    attention shapes); ``layer_map``: the donor layer of each decoder layer (default one-to-one);
    ``checkpoint``: best or last, when the donor is a run.
    """

    donor: str | None = None
    layer_map: list[int] | None = None
    checkpoint: str = "best"


def apply_swap(network: torch.nn.Module, options: SwapOptions) -> None:
    """Replace ``network``'s decoder self-attention as ``options`` say (nothing when no donor is given)."""
    if options.donor is None:
        return
    if options.donor == "none":
        raise ConfigError("swap.donor=none: leave swap.donor unset (null) to keep the model's own self-attention")
    swap_self_attention(network, options.donor, options.layer_map, options.checkpoint)


@dataclass
class GenerateSchema:
    """Top-level options of ``trustml-generate``."""

    task_name: str = "generate"
    seed: int = 0
    device: str = "cpu"
    model: ModelSource = field(default_factory=ModelSource)
    secondary: ModelSource = field(default_factory=ModelSource)
    data: GenerateData = field(default_factory=GenerateData)
    knobs: KnobSettings = field(default_factory=KnobSettings)
    swap: SwapOptions = field(default_factory=SwapOptions)
    batch_size: int = 16
    generation: dict[str, Any] = field(default_factory=lambda: {"num_beams": 1, "do_sample": False})
    score_perplexity: bool = True
    trusted_target_prefixes: list[str] = field(default_factory=list)
    print_results: bool = True
    paths: Any = None


def load_seq2seq(source: ModelSource, what: str) -> HFSeq2SeqModel:
    """The model ``source`` names: the weights of a training run, or an ``hf_seq2seq`` model built from options."""
    if source.run_dir is not None:
        model, _ = load_model_from_run(source.run_dir, source.checkpoint)
        if not isinstance(model, HFSeq2SeqModel):
            raise ConfigError(
                f"{what}.run_dir={source.run_dir} holds a {type(model).__name__}, not an encoder-decoder; "
                "give a run of method=seq2seq model=hf_seq2seq"
            )
        return model
    if not source.is_set:
        raise ConfigError(
            f"no {what} given: set {what}.run_dir (a method=seq2seq run), {what}.pretrained (a name or "
            f"save_pretrained folder) or {what}.random_init_config"
        )
    options = {f.name: getattr(source, f.name) for f in dataclasses.fields(HFSeq2SeqConfig)}
    return HFSeq2SeqModel(HFSeq2SeqConfig(**options)).eval()


def generate(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Build models, data and knobs from ``cfg``; write ``generations.jsonl``; return the metrics."""
    settings: KnobSettings = OmegaConf.to_object(cfg.knobs)  # its checks raise ConfigError for bad knob values
    model_source: ModelSource = OmegaConf.to_object(cfg.model)
    secondary_source: ModelSource = OmegaConf.to_object(cfg.secondary)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    torch.manual_seed(int(cfg.seed))
    model = load_seq2seq(model_source, "model")
    apply_swap(model.network, OmegaConf.to_object(cfg.swap))
    model = model.to(cfg.device)
    secondary = load_seq2seq(secondary_source, "secondary").to(cfg.device) if secondary_source.is_set else None
    turns = read_grounded_turns(cfg.data.data_dir, cfg.data.split, history_turns=int(cfg.data.history_turns))
    examples = grounded_examples(turns, "response", cfg.data.turn_separator)
    if cfg.data.max_examples is not None:
        examples = examples[: int(cfg.data.max_examples)]
    generator = KnobGenerator(
        model.network,
        model.tokenizer,
        settings,
        vocabulary=model.vocabulary,
        secondary=secondary.network if secondary is not None else None,
    )
    rows, metrics = generate_and_score(
        model,
        generator,
        examples,
        int(cfg.batch_size),
        dict(OmegaConf.to_container(cfg.generation, resolve=True)),
        bool(cfg.score_perplexity),
    )
    with (run_dir / "generations.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(dataclasses.asdict(row), ensure_ascii=False) + "\n")
    return metrics


def generate_task(cfg: DictConfig, job: Job) -> TaskResult:
    """The body of ``trustml-generate``: generations into the job's directory, their metrics as the results."""
    return TaskResult(generate(cfg, job.run_dir))


def _prepare() -> None:
    """Register the ``generate`` schema and the ``cwd`` resolver."""
    register_config_support()
    ConfigStore.instance().store(name="generate_schema", node=GenerateSchema, provider="trustml")


APP = TaskApp(
    program="trustml-generate",
    config_name="generate",
    job_name="generate",
    body=generate_task,
    help_sections=(KnobSettings, SwapOptions),  # --help: this docstring, the knobs, the swap, conf/generate.yaml
    prepare=_prepare,
)


def main() -> None:
    """Console entry point of ``trustml-generate``."""
    run_app(APP)


if __name__ == "__main__":
    main()
