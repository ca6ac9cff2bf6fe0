"""Safe instantiation: configs may only build objects from trusted module prefixes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig

from trustml.errors import ConfigError

TRUSTED_PREFIXES = ("trustml", "torch", "pytorch_lightning", "lightning", "transformers", "torchmetrics")


def _is_trusted(target: str, prefixes: Iterable[str]) -> bool:
    return any(target == p or target.startswith(p.rstrip(".") + ".") for p in prefixes)


def check_targets(cfg: DictConfig | ListConfig, extra_prefixes: Iterable[str] = ()) -> None:
    """Refuse any ``_target_`` outside the trusted prefixes (built-ins plus ``extra_prefixes``).

    The error names the config key holding the untrusted target and the option that trusts it.
    """
    prefixes = (*TRUSTED_PREFIXES, *extra_prefixes)

    def walk(node: Any, key: str) -> None:
        if isinstance(node, DictConfig):
            target = node.get("_target_") if "_target_" in node else None
            if target is not None and not _is_trusted(str(target), prefixes):
                raise ConfigError(
                    f"{key or '<root>'}._target_='{target}' is not from a trusted module; trusted prefixes are "
                    f"{list(prefixes)} (add yours with trusted_target_prefixes=[...])"
                )
            for k in node.keys():
                walk(node._get_node(k), f"{key}.{k}" if key else str(k))
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                walk(node._get_node(i), f"{key}[{i}]")

    walk(cfg, "")
