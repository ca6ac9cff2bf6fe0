"""``trustml``: the Hydra application that composes and runs one experiment (or a sweep with ``-m``).

The command line, checks, run record, exit codes and signals are those of every trustml app
(:mod:`trustml.cli.task`). Before anything runs, ``trustml`` also refuses options a plugin does not have
(``+optimizer.lrr=0.1``), values of the wrong type for a typed option (``trainer.max_epochs=abc``) and plugins whose
optional extra is not installed (``logger=tensorboard``) (:mod:`trustml.cli.option_checks`).

Start-up stays short: ``trustml --help`` lists the plugins from their sources without importing them, and a run
imports only the plugins it selects (:mod:`trustml.cli.plugin_configs`); torch and Lightning are imported when
the run starts.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from trustml.cli.help import print_help
from trustml.cli.task import Job, TaskApp, TaskResult, run_app


def run(cfg: DictConfig, choices: dict[str, str]) -> Any:
    """Run the experiment ``cfg`` (:func:`trustml.runner.run`, imported here: it needs torch and Lightning)."""
    from trustml.runner import run as run_experiment

    return run_experiment(cfg, choices)


def train(cfg: DictConfig, job: Job) -> TaskResult:
    """The body of ``trustml``: run the experiment; its model spec goes into ``run.json``."""
    outcome = run(cfg, job.choices)
    return TaskResult(outcome.results, {"model_spec": outcome.model_spec})


def _prepare() -> None:
    """Register the training schema, the ``cwd`` resolver and every plugin (imported when selected)."""
    from trustml.cli.plugin_configs import register_plugin_configs
    from trustml.config_schema import register_config_support

    register_config_support()
    register_plugin_configs()


def _check(cfg: DictConfig) -> None:
    """The plugins' options and extras (:mod:`trustml.cli.option_checks`)."""
    from omegaconf import OmegaConf

    from trustml.cli.option_checks import check_extras, check_options

    check_extras(cfg)
    check_options(cfg, dict(OmegaConf.select(cfg, "hydra.runtime.choices") or {}))


APP = TaskApp(
    program="trustml",
    config_name="train",
    job_name="main",
    body=train,
    print_help=print_help,
    prepare=_prepare,
    check=_check,
    imports=("trustml.runner",),
)


def main() -> None:
    """Console entry point of ``trustml``."""
    run_app(APP)


if __name__ == "__main__":
    main()
