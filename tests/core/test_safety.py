"""Safety: only trusted _target_ prefixes are instantiated; checkpoints load with weights_only=True."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trustml.errors import CheckpointError, ConfigError
from trustml.run_record import load_state_dict
from trustml.safety import check_targets


def test_untrusted_targets_are_refused_with_the_key() -> None:
    cfg = OmegaConf.create({"model": {"_target_": "trustml.models.mlp.MLP"}, "x": [{"_target_": "os.system"}]})
    with pytest.raises(ConfigError, match=r"x\[0\]._target_='os.system'"):
        check_targets(cfg)
    check_targets(cfg, extra_prefixes=["os"])
    with pytest.raises(ConfigError):
        check_targets(OmegaConf.create({"_target_": "torchvision_evil.x"}))  # prefix match is by module


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle exploit shape
        return (print, ("pwned",))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": {"model.w": torch.zeros(1)}, "extra": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(path)


def test_clean_checkpoint_loads_model_weights(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2), "other": torch.zeros(1)}}, path)
    assert set(load_state_dict(path)) == {"w"}
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.ckpt")


def _compose(overrides: list[str]):
    """The composed config (Hydra's own node included), as ``trustml`` composes it before Hydra runs."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from trustml.config_schema import register_config_support
    from trustml.registry import load_plugins

    load_plugins()
    register_config_support()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="trustml.conf", version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


HYDRA_INJECTIONS = {
    "callback": (
        ["+hydra.callbacks.evil._target_=shutil.copyfile"],
        r"hydra.callbacks.evil._target_='shutil.copyfile'",
    ),
    "launcher": (["hydra.launcher._target_=os.system"], r"hydra.launcher._target_='os.system'"),
    "sweeper": (["hydra.sweeper._target_=hydra.utils.call"], r"hydra.sweeper._target_='hydra.utils.call'"),
    "logging handler class": (
        ["hydra.job_logging.handlers.console.class=shutil.copyfile"],
        r"hydra.job_logging.handlers.console.class='shutil.copyfile'",
    ),
    "hydra logging handler class": (
        ["hydra.hydra_logging.handlers.console.class=subprocess.Popen"],
        r"hydra.hydra_logging.handlers.console.class='subprocess.Popen'",
    ),
    "logging ext:// import": (
        ["hydra.job_logging.handlers.console.stream=ext://antigravity.x"],
        r"may only reference \['ext://sys.stdout'",
    ),
    "nested node through an interpolation": (
        ["+evil={_target_:shutil.copyfile}", "+hydra.callbacks.x=${evil}"],
        r"hydra.callbacks.x._target_='shutil.copyfile'",
    ),
    "interpolated target": (
        ["+hydra.callbacks.x._target_=${oc.decode:trustml.x}"],
        r"must be written literally",
    ),
    "private hydra internals": (
        ["+hydra.callbacks.x._target_=hydra._internal.utils._locate"],
        r"hydra.callbacks.x._target_='hydra._internal.utils._locate'",
    ),
    "env_set LD_PRELOAD": (["+hydra.job.env_set.LD_PRELOAD=/tmp/x.so"], r"may not set LD_PRELOAD"),
    "env_set torch weights_only": (
        ["+hydra.job.env_set.TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"],
        r"may not set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",
    ),
    "launcher shell setup": (["+hydra.launcher.setup=[touch x]"], r"hydra.launcher.setup is refused"),
}


@pytest.mark.parametrize("case", sorted(HYDRA_INJECTIONS))
def test_code_in_hydras_own_config_is_refused(case: str) -> None:
    from trustml.safety import check_config

    overrides, expected = HYDRA_INJECTIONS[case]
    with pytest.raises(ConfigError, match=expected):
        check_config(_compose(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["hparams_search=joblib"],
        ["+hydra.job.env_set.OMP_NUM_THREADS=2"],
        ["logger=many", "callbacks=early_stopping"],
    ],
)
def test_the_shipped_hydra_configs_pass(overrides: list[str]) -> None:
    from trustml.safety import check_config

    check_config(_compose(overrides))


def test_the_optuna_sweeper_config_passes_and_extra_prefixes_extend_hydra_targets() -> None:
    from trustml.safety import check_hydra_config

    hydra_cfg = OmegaConf.create(
        {
            "sweeper": {
                "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1},
                "params": {"model.dropout": "interval(0.0, 0.5)"},
            },
            "job_logging": {"handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}}},
            "callbacks": {"mine": {"_target_": "mypkg.Callback"}},
        }
    )
    with pytest.raises(ConfigError, match="mypkg.Callback"):
        check_hydra_config(hydra_cfg)
    check_hydra_config(hydra_cfg, ["mypkg"])
    hydra_cfg.sweeper.params["hydra.job.env_set.LD_PRELOAD"] = "choice(a.so,b.so)"
    with pytest.raises(ConfigError, match="a sweeper may not vary Hydra's own config"):
        check_hydra_config(hydra_cfg, ["mypkg"])


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"_target_": "torch.hub.load", "repo_or_dir": "evil/repo"}, "loads or runs code"),
        ({"_target_": "torch.utils.collect_env.run", "command": "touch x"}, "loads or runs code"),
        ({"_target_": "torch.ops.load_library", "path": "x.so"}, "loads or runs code"),
        ({"_target_": "torch._C._x"}, "private"),
        ({"_target_": "trustml.models.hf_encoder.HFEncoder", "trust_remote_code": True}, "trust_remote_code=true"),
        ({"_target_": "trustml.x", "inner": {"weights_only": False}}, "weights_only=false"),
    ],
)
def test_code_loading_callables_inside_trusted_packages_are_refused(node: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        check_targets(OmegaConf.create({"model": node}))


def test_a_run_directory_cannot_extend_trust_by_itself(tmp_path: Path) -> None:
    import json

    from trustml.run_record import load_model_from_run

    record = {
        "status": "completed",
        "trusted_target_prefixes": ["os"],
        "model_spec": {"config": {"_target_": "os.system", "command": "touch pwned"}, "num_classes": 2},
    }
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"trained with trusted_target_prefixes=\['os'\]: pass them if you trust"):
        load_model_from_run(tmp_path)
    assert not (tmp_path / "pwned").exists()


def _code_only(source: str) -> str:
    """``source`` without its strings, docstrings and comments (so prose about unsafe calls does not count)."""
    import io
    import tokenize

    kept = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type not in (tokenize.STRING, tokenize.COMMENT)
    ]
    return " " + " ".join(kept)


def test_every_file_the_package_loads_is_read_without_unpickling() -> None:
    """torch.load only with weights_only=True; no pickle/joblib/numpy-pickle/yaml.load/eval in the package code."""
    import re

    package = Path(__file__).resolve().parents[2] / "trustml"
    unsafe = re.compile(
        r"\bpickle\s*\.\s*loads?\b|\bjoblib\s*\.\s*load\b|allow_pickle\s*=\s*True|"
        r"\byaml\s*\.\s*(?:load|unsafe_load|full_load)\b|(?<!\.)\s+(?:eval|exec)\s*\(|"
        r"weights_only\s*=\s*False|trust_remote_code\s*=\s*True"
    )
    problems = []
    for path in package.rglob("*.py"):
        code = _code_only(path.read_text())
        problems += [f"{path.relative_to(package)}: {m.group(0)}" for m in unsafe.finditer(code)]
        for call in re.finditer(r"torch\s*\.\s*load\s*\((.*?)\)", code):
            if not re.search(r"weights_only\s*=\s*True", call.group(1)):
                problems.append(f"{path.relative_to(package)}: torch.load({call.group(1)})")
    assert not problems, problems
    assert unsafe.search(_code_only("x = pickle.loads(data)\n")) and not unsafe.search(_code_only("model.eval()\n"))
