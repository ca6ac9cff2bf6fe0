"""The name under which a Hugging Face model takes and returns its KV cache, read off the installed transformers.

transformers up to 5.23 calls it ``past_key_values``; 5.24 renamed it ``cache`` (the old keyword is deprecated and
accepted until 5.40 for ``forward`` and 6.0 for ``generate``). The knobs read the cache a decoder is called with
and hand a cache to ``generate()``, so they look the name up in the model's public signature instead of assuming
one, and accept either where they read it.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

#: Cache keyword names, newest first.
CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(model: nn.Module) -> str:
    """The keyword ``model.generate`` (or ``forward``) takes its KV cache by: ``cache`` or ``past_key_values``."""
    method = getattr(model, "generate", None) or model.forward
    parameters = inspect.signature(method).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    # generate(**kwargs) without a named cache parameter: the forward's own name is the one it passes on
    forward = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in forward), "past_key_values")


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The KV cache among a module call's keyword arguments (under either name), or ``None``."""
    for name in CACHE_KEYWORDS:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def cache_given(kwargs: dict[str, Any]) -> bool:
    """Whether ``generate()`` keyword arguments already hold a cache (under either name)."""
    return any(name in kwargs for name in CACHE_KEYWORDS)


def output_cache(output: Any) -> Any:
    """The KV cache a model output returns (``.cache`` from 5.24, ``.past_key_values`` before)."""
    for name in CACHE_KEYWORDS:
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None
