"""``trustml-synth``: the Hydra app that turns golden utterances into a synthetic annotated data set.

    trustml-synth golden=golden.yaml catalogs=catalogs/ budget_per_intent=5000 synth/allocation=borrow

writes ``grammar.txt`` (readable rules), ``grammar.json``, ``dataset.jsonl`` (plus ``dataset.rasa.yml`` /
``dataset.snips.json`` when asked in ``output.formats``), ``stats.json`` (the full report), ``results.json`` (its
counts) and ``run.json`` (the run record) into its run directory under ``paths.log_dir`` (``logs/runs/<time>``).
Bad input ends the run with one message (file, line, option) and exit status 2; the other exit codes are those of
``trustml --help``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from trustml.cli.task import Job, TaskApp, TaskResult, run_app
from trustml.errors import ConfigError
from trustml.synth import formats
from trustml.synth.catalog import catalog_sizes, load_catalogs
from trustml.synth.formats import load_utterances, write_jsonl, write_rasa_yaml, write_snips_json
from trustml.synth.fst import MAX_ARCS
from trustml.synth.induction import InductionConfig
from trustml.synth.synthesis import SynthesisConfig, select_golden, synthesize

log = logging.getLogger(__name__)

WRITERS = {
    "jsonl": ("dataset.jsonl", write_jsonl),
    "rasa": ("dataset.rasa.yml", write_rasa_yaml),
    "snips": ("dataset.snips.json", write_snips_json),
}


def synthesis_config(cfg: DictConfig) -> SynthesisConfig:
    """The :class:`SynthesisConfig` of a composed ``synth`` config (raises :class:`ConfigError` when invalid)."""
    try:
        induction = InductionConfig(**OmegaConf.to_container(cfg.induction, resolve=True), seed=int(cfg.seed))
    except TypeError as exc:
        raise ConfigError(f"bad 'induction' options: {exc}; see conf/synth.yaml for the valid keys") from exc
    return SynthesisConfig(
        induction=induction,
        budget_per_intent=int(cfg.budget_per_intent),
        allocation=str(cfg.allocation.strategy),
        allocation_floor=int(cfg.allocation.floor),
        resampling=bool(cfg.resampling.enabled),
        resampling_threshold=float(cfg.resampling.threshold),
        resampling_by_intent=bool(cfg.resampling.by_intent),
        catalog_weight=float(cfg.catalog_weight),
        catalog_match=str(cfg.catalog_match),
        include_golden=bool(cfg.include_golden),
        seed=int(cfg.seed),
        max_arcs=int(cfg.get("max_arcs", MAX_ARCS)),
        progress=_progress(cfg.get("progress", "auto")),
    )


def _progress(value: Any) -> bool:
    """``progress``: ``true``/``false``, or ``auto`` (a bar when stderr is a terminal)."""
    if value == "auto" or value is None:
        return sys.stderr.isatty()
    if isinstance(value, bool):
        return value
    raise ConfigError(f"progress must be true, false or auto, got '{value}'")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Load the inputs named in ``cfg``, synthesize, write the outputs into ``out_dir``; return the report."""
    if OmegaConf.is_missing(cfg, "golden"):
        raise ConfigError("no golden utterances: set golden=<file> (or a list of files) on the command line")
    unknown = [f for f in cfg.output.formats if f not in WRITERS]
    if unknown:
        raise ConfigError(f"output.formats has unknown {unknown}; choose from {sorted(WRITERS)}")
    config = synthesis_config(cfg)
    max_values = cfg.get("catalog_max_values")
    catalogs = load_catalogs(
        to_absolute_path(cfg.catalogs) if cfg.catalogs else None, int(max_values) if max_values is not None else None
    )
    if catalogs:
        log.info("catalogs (values each): %s", ", ".join(f"{k} {n:,}" for k, n in catalog_sizes(catalogs).items()))
    paths = cfg.golden if isinstance(cfg.golden, ListConfig) else [cfg.golden]
    golden = []
    for path in paths:
        golden += load_utterances(to_absolute_path(str(path)), catalogs=set(catalogs) or None, encoding=cfg.encoding)
    golden = select_golden(golden, cfg.golden_per_intent, int(cfg.seed))
    result = synthesize(golden, catalogs, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grammar.txt").write_text(result.grammar.render(int(cfg.output.render_max_values)), encoding="utf-8")
    result.grammar.save(out_dir / "grammar.json")
    files = [str(WRITERS[f][1](result.dataset, out_dir / WRITERS[f][0])) for f in cfg.output.formats]
    report = {**result.report, "catalog_max_values": max_values, "files": files}
    (out_dir / "stats.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    g = report["grammar"]["total"]
    exact = all(report["unique_sentences_exact"].values())
    log.info(
        "grammar: %d rules, %.4g %s; data set: %d utterances (%d generated) in %s",
        g["rules"],
        sum(report["unique_sentences"].values()),
        "unique sentences" if exact else "derivations (distinct sentences not counted: flat acceptor above max_arcs)",
        report["dataset"],
        report["generated"],
        out_dir,
    )
    for trace in report["induction"]:
        if trace["stopped"] != "converged":
            log.warning(
                "induction of intent %s stopped at its %s after %d merges and %d chunks: the grammar is the best "
                "one reached so far, not a converged one (stats.json: induction[].stopped)",
                trace["intent"],
                trace["stopped"].replace("_", " "),
                trace["merges"],
                trace["chunks"],
            )
    return report


def synth_task(cfg: DictConfig, job: Job) -> TaskResult:
    """The body of ``trustml-synth``: the data set into the job's directory; its counts as the results."""
    report = run(cfg, job.run_dir)
    results: dict[str, Any] = {
        "golden": report["golden"],
        "generated": report["generated"],
        "dataset": report["dataset"],
        "unique_texts": report["unique_texts"],
        "grammar_rules": report["grammar"]["total"]["rules"],
        "unique_sentences": sum(report["unique_sentences"].values()),
        "unique_sentences_exact": all(report["unique_sentences_exact"].values()),
        "induction_stopped_early": len(report["induction_stopped_early"]),
    }
    return TaskResult(results)


def _prepare() -> None:
    """Register the ``cwd`` resolver (``paths``)."""
    from trustml.config_schema import register_config_support

    register_config_support()


APP = TaskApp(
    program="trustml-synth",
    config_name="synth",
    job_name="synth",
    body=synth_task,
    help_sections=(formats,),  # --help: this docstring, the input formats, conf/synth.yaml
    prepare=_prepare,
)


def main() -> None:
    """Console entry point of ``trustml-synth``."""
    run_app(APP)


if __name__ == "__main__":
    main()
