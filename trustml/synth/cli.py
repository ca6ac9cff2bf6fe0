"""``trustml-synth``: the Hydra app that turns golden utterances into a synthetic annotated data set.

    trustml-synth golden=golden.yaml catalogs=catalogs/ budget_per_intent=5000 synth/allocation=borrow

writes ``grammar.txt`` (readable rules), ``grammar.json``, ``dataset.jsonl`` (plus ``dataset.rasa.yml`` /
``dataset.snips.json`` when asked in ``output.formats``) and ``stats.json`` into the Hydra run directory.
Bad input ends the run with one message (file, line, option) and exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from trustml.cli.app_help import print_app_help, wants_help
from trustml.errors import ConfigError, TrustMLError
from trustml.synth.catalog import load_catalogs
from trustml.synth.formats import load_utterances, write_jsonl, write_rasa_yaml, write_snips_json
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
    )


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Load the inputs named in ``cfg``, synthesize, write the outputs into ``out_dir``; return the report."""
    if OmegaConf.is_missing(cfg, "golden"):
        raise ConfigError("no golden utterances: set golden=<file> (or a list of files) on the command line")
    unknown = [f for f in cfg.output.formats if f not in WRITERS]
    if unknown:
        raise ConfigError(f"output.formats has unknown {unknown}; choose from {sorted(WRITERS)}")
    config = synthesis_config(cfg)
    catalogs = load_catalogs(to_absolute_path(cfg.catalogs) if cfg.catalogs else None)
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
    report = {**result.report, "files": files}
    (out_dir / "stats.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    g = report["grammar"]["total"]
    log.info("grammar: %d rules, %d unique sentences; data set: %d utterances (%d generated) in %s",
             g["rules"], sum(report["unique_sentences"].values()), report["dataset"], report["generated"], out_dir)
    return report


@hydra.main(config_path="pkg://trustml.conf", config_name="synth", version_base="1.3")
def synth_app(cfg: DictConfig) -> None:
    """The Hydra task of ``trustml-synth``."""
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except TrustMLError as exc:
        print(f"trustml-synth: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console entry point of ``trustml-synth``: its own ``--help`` (options and input formats), else the app."""
    if wants_help(sys.argv[1:]):
        from trustml.synth import formats

        print_app_help("trustml-synth", sys.modules[__name__], "synth", [formats])
        return
    synth_app()


if __name__ == "__main__":
    main()
