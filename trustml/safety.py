"""Safe configs: what a composed config may instantiate, import or set, checked before anything is built.

The rules (the README's "Threat model" section states them for users):

- **Run config** (everything but ``hydra``): a ``_target_`` must start with a trusted module prefix
  (:data:`TRUSTED_PREFIXES`, plus ``trusted_target_prefixes=[...]`` given on the command line) or be the exact
  target of a registered plugin, and must not be one of :data:`REFUSED_TARGET_PREFIXES` (callables inside those
  packages that load or run code named by data: native libraries, pickles, Torch Hub repositories,
  TorchScript, shell commands, remote model code) nor have a private (``_``-prefixed) path component.
  ``trust_remote_code: true`` and ``weights_only: false`` are refused anywhere.
- **Hydra config** (``hydra.*``: callbacks, launcher, sweeper, logging, job environment): a ``_target_`` must
  be one of :data:`HYDRA_TARGET_PREFIXES` (Hydra's basic launcher/sweeper and experimental callbacks,
  installed ``hydra_plugins``, Optuna samplers/pruners, ``trustml``); logging ``class``/``()`` factories must
  be ``logging.*`` (or ``colorlog.*``) and ``ext://`` references only ``sys.stdout``/``sys.stderr``; these
  values must be written literally (no interpolation); ``hydra.job.env_set`` must not set variables that
  change which code runs (:data:`REFUSED_ENV_PREFIXES`, :data:`REFUSED_ENV_NAMES`); launcher ``setup`` /
  ``srun_args`` shell commands and sweeper parameters over ``hydra.*`` keys are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig

from trustml.errors import ConfigError

TRUSTED_PREFIXES = ("trustml", "torch", "pytorch_lightning", "lightning", "transformers", "torchmetrics")

#: Inside trusted packages, callables that load or execute code named by config data. Refused everywhere.
REFUSED_TARGET_PREFIXES = (
    "torch.hub",
    "torch.load",
    "torch.serialization",
    "torch.jit",
    "torch.package",
    "torch.export",
    "torch.ops",
    "torch.classes",
    "torch.library",
    "torch.multiprocessing",
    "torch.distributed",
    "torch.cuda.jiterator",
    "torch.utils.cpp_extension",
    "torch.utils.collect_env",
    "torch.utils.benchmark",
    "torch.utils.bottleneck",
    "torch.utils.show_pickle",
    "torch.utils.model_zoo",
    "torch.utils.hipify",
    "pytorch_lightning.cli",
    "lightning.pytorch.cli",
    "lightning.fabric.cli",
    "lightning.app",
    "transformers.dynamic_module_utils",
    "transformers.agents",
    "transformers.tools",
    "transformers.commands",
    "transformers.testing_utils",
)

#: Keyword arguments that switch a trusted loader into executing code from a file or repository.
REFUSED_ARGUMENTS: dict[str, Any] = {"trust_remote_code": True, "weights_only": False}

#: What ``hydra.*`` nodes (callbacks, launcher, sweeper) may instantiate.
HYDRA_TARGET_PREFIXES = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra.experimental.callbacks",
    "hydra_plugins",
    "optuna.samplers",
    "optuna.pruners",
    "trustml",
)

#: What the ``class`` / ``()`` keys of ``hydra.job_logging`` / ``hydra.hydra_logging`` may name.
LOGGING_CLASS_PREFIXES = ("logging", "colorlog")

#: The only ``ext://`` objects a logging config may reference.
LOGGING_EXTERNAL_OBJECTS = ("ext://sys.stdout", "ext://sys.stderr")

#: ``hydra.job.env_set`` names that change which code runs (loader, interpreter, git, torch.load, Hydra policy).
REFUSED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "GIT_", "HYDRA_", "TORCH_FORCE_")
REFUSED_ENV_NAMES = ("PATH", "BASH_ENV", "ENV", "SHELLOPTS", "PERL5OPT", "PERL5LIB", "RUBYOPT", "NODE_OPTIONS")

#: Launcher options that run shell commands (the Submitit launcher's).
REFUSED_LAUNCHER_OPTIONS = ("setup", "srun_args")

#: Sections of the Hydra config whose content Hydra instantiates or hands to ``logging.config``.
_HYDRA_SENSITIVE = ("callbacks", "launcher", "sweeper", "job_logging", "hydra_logging")

_UNRESOLVED = object()


def _matches(target: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted ``target`` is one of ``prefixes`` or inside one (module-wise, not string-wise)."""
    return any(target == p or target.startswith(p.rstrip(".") + ".") for p in prefixes)


def _is_trusted(target: str, prefixes: Iterable[str]) -> bool:
    """Whether ``target`` is under a trusted prefix."""
    return _matches(target, prefixes)


def _registered_targets() -> set[str]:
    """The exact ``_target_`` of every plugin (installed code the user chose): registered ones and those the source
    index lists (a run imports only the plugins it selects)."""
    from trustml.registry import plugin_index, plugins

    registered = {info.target for group in plugins().values() for info in group.values()}
    indexed = {f"{e.module}.{e.qualname}" for group in plugin_index().values() for e in group.values()}
    return registered | indexed


def _refusal(target: str) -> str | None:
    """Why ``target`` is refused even under a trusted prefix, or ``None``."""
    if _matches(target, REFUSED_TARGET_PREFIXES):
        return "it loads or runs code named by data"
    if any(part.startswith("_") for part in target.split(".")):
        return "it is a private (underscore) name"
    return None


def _raw(node: Any) -> Any:
    """The unresolved value of a leaf node (an interpolation stays a ``${...}`` string)."""
    return node._value() if hasattr(node, "_value") else node


def _child(parent: DictConfig | ListConfig, key: Any) -> tuple[Any, Any]:
    """``(raw node, resolved value or _UNRESOLVED)`` of ``parent[key]``."""
    raw = parent._get_node(key)
    if raw is not None and raw._is_interpolation():
        try:
            return raw, parent[key]
        except Exception:  # noqa: BLE001 - unresolvable now (runtime values); the caller decides
            return raw, _UNRESOLVED
    if isinstance(raw, DictConfig | ListConfig):
        return raw, raw
    try:
        return raw, parent[key]
    except Exception:  # noqa: BLE001 - e.g. a missing mandatory value (???)
        return raw, _UNRESOLVED


def _walk(
    node: DictConfig | ListConfig,
    path: str,
    visit: Callable[[str, str, Any, Any, Any], None],
    skip: Iterable[str] = (),
) -> None:
    """Call ``visit(parent_path, path, key, raw_node, value)`` for every entry, descending into (resolved)
    containers; top-level keys in ``skip`` are left out."""
    keys: Iterable[Any] = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if not path and key in skip:
            continue
        child_path = (f"{path}.{key}" if path else str(key)) if isinstance(node, DictConfig) else f"{path}[{key}]"
        raw, value = _child(node, key)
        visit(path, child_path, key, raw, value)
        if isinstance(value, DictConfig | ListConfig) and not value._is_none() and not value._is_missing():
            _walk(value, child_path, visit)


def check_targets(
    cfg: DictConfig | ListConfig, extra_prefixes: Iterable[str] = (), *, skip: Iterable[str] = ()
) -> None:
    """Refuse any ``_target_`` (and code-enabling argument) of a run config outside the trusted set.

    Trusted: :data:`TRUSTED_PREFIXES`, ``extra_prefixes`` and the exact targets of registered plugins, minus
    :data:`REFUSED_TARGET_PREFIXES` and private names. The error names the config key, the rule and the fix.
    A ``_target_`` interpolation that cannot be resolved yet (it needs runtime values) is skipped: the runner
    checks the config again, resolved, before it builds anything. Top-level keys in ``skip`` are not checked.
    """
    prefixes = (*TRUSTED_PREFIXES, *extra_prefixes)
    registered = _registered_targets()

    def visit(parent: str, path: str, key: Any, raw: Any, value: Any) -> None:
        """Check one config entry."""
        if value is _UNRESOLVED:
            return
        if key == "_target_":
            target = str(value)
            if target in registered and _refusal(target) is None:
                return
            if not _is_trusted(target, prefixes):
                raise ConfigError(
                    f"{path}='{target}' is not from a trusted module; trusted prefixes are {list(prefixes)} "
                    f"(add yours with trusted_target_prefixes=[...] on the command line; a config file cannot)"
                )
            reason = _refusal(target)
            if reason is not None:
                raise ConfigError(
                    f"{path}='{target}' is refused: {reason}; configs may not use it (see the README's 'Threat model')"
                )
        elif isinstance(key, str) and key in REFUSED_ARGUMENTS and isinstance(value, bool):
            if value == REFUSED_ARGUMENTS[key]:
                raise ConfigError(
                    f"{path}={str(value).lower()} is refused: it lets a loader execute code from the files it loads; "
                    f"remove it (configs may not enable it)"
                )

    _walk(cfg, "", visit, skip)


def _check_hydra_target(path: str, raw: Any, value: Any, extra_prefixes: Iterable[str]) -> None:
    """Refuse a ``_target_`` in Hydra's own config outside :data:`HYDRA_TARGET_PREFIXES`."""
    if raw is not None and raw._is_interpolation():
        raise ConfigError(f"{path}={_raw(raw)}: a Hydra _target_ must be written literally, not interpolated")
    target = str(value)
    allowed = (*HYDRA_TARGET_PREFIXES, *extra_prefixes)
    exact_private = target in HYDRA_TARGET_PREFIXES
    if not _matches(target, allowed) or (not exact_private and _refusal(target) is not None):
        raise ConfigError(
            f"{path}='{target}' is refused: Hydra's own config may only instantiate {list(HYDRA_TARGET_PREFIXES)} "
            f"(Hydra's launchers, sweepers and callbacks, installed hydra_plugins, Optuna samplers, trustml); "
            f"remove it, or add trusted_target_prefixes=[...] on the command line if you trust that module"
        )


def _check_logging(path: str, key: Any, raw: Any, value: Any) -> None:
    """Refuse logging factories and ``ext://`` imports outside the allowed ones."""
    if key in ("class", "()"):
        if raw is not None and raw._is_interpolation():
            raise ConfigError(f"{path}={_raw(raw)}: a logging class must be written literally, not interpolated")
        if not isinstance(value, str) or not _matches(value, LOGGING_CLASS_PREFIXES):
            raise ConfigError(
                f"{path}='{value}' is refused: Hydra's logging config may only name {list(LOGGING_CLASS_PREFIXES)} "
                f"classes (e.g. logging.StreamHandler, logging.FileHandler)"
            )
    if isinstance(value, str) and value.startswith("ext://") and value not in LOGGING_EXTERNAL_OBJECTS:
        raise ConfigError(
            f"{path}='{value}' is refused: a logging config may only reference {list(LOGGING_EXTERNAL_OBJECTS)}"
        )


def check_env_name(path: str, name: str) -> None:
    """Refuse a ``hydra.job.env_set`` variable that changes which code runs."""
    upper = name.upper()
    if upper in REFUSED_ENV_NAMES or upper.startswith(REFUSED_ENV_PREFIXES) or "WEIGHTS_ONLY" in upper:
        raise ConfigError(
            f"{path} is refused: a config may not set {name}, which changes what code runs or how files are loaded "
            f"(refused: {', '.join(REFUSED_ENV_NAMES)} and names starting with {', '.join(REFUSED_ENV_PREFIXES)}); "
            f"set it in your shell if you mean it"
        )


def check_hydra_config(hydra_cfg: DictConfig, extra_prefixes: Iterable[str] = ()) -> None:
    """Refuse anything in Hydra's own config (``cfg.hydra``) that would run code beyond the allowed plugins.

    See the module docstring for the rules. ``extra_prefixes`` are the command line's
    ``trusted_target_prefixes``, which extend both the run config's and Hydra's allowed targets.
    """
    extra = tuple(extra_prefixes)

    def visit(parent: str, path: str, key: Any, raw: Any, value: Any) -> None:
        """Check one config entry."""
        section = path.split(".")[1].split("[")[0] if "." in path else ""
        if value is _UNRESOLVED:
            text = _raw(raw)
            bare = isinstance(text, str) and text.startswith("${") and text.endswith("}") and text.count("${") == 1
            if section in _HYDRA_SENSITIVE and bare:
                raise ConfigError(
                    f"{path}={text} cannot be checked before the run starts; write this Hydra option literally"
                )
            return
        if key == "_target_":
            _check_hydra_target(path, raw, value, extra)
        if section in ("job_logging", "hydra_logging"):
            _check_logging(path, key, raw, value)
        if parent == "hydra.launcher" and key in REFUSED_LAUNCHER_OPTIONS and value:
            raise ConfigError(f"{path} is refused: it runs shell commands; configs may not set it")
        if parent == "hydra.sweeper.params" and str(key).lstrip("+~").startswith("hydra."):
            raise ConfigError(f"{path} is refused: a sweeper may not vary Hydra's own config ({key})")
        if parent == "hydra.job.env_set":
            check_env_name(path, str(key))

    _walk(hydra_cfg, "hydra", visit)


def check_config(cfg: DictConfig, extra_prefixes: Iterable[str] = ()) -> None:
    """Check a composed config: the run part with :func:`check_targets`, ``cfg.hydra`` with
    :func:`check_hydra_config` (when present)."""
    extra = tuple(extra_prefixes)
    if "hydra" in cfg:
        check_hydra_config(cfg.hydra, extra)
    check_targets(cfg, extra, skip=("hydra",))
