"""Transplant self-attention weights between transformers: the donor side of ``method=attention_swap``.

Hazarika et al. (arXiv 2106.06411) conjecture that an encoder-decoder's decoder self-attention mainly keeps the
output fluent, so it can be taken from another fluent model. This module reads the self-attention of a donor —
the decoder of an encoder-decoder, or the layers of a decoder-only language model or of an encoder — as
per-layer *roles* (query, key and value projections, output projection, their biases, T5's relative position
bias), in ``nn.Linear`` layout (GPT-2's fused ``Conv1D`` ``c_attn`` is split and transposed), and writes them into
the decoder self-attention of a target encoder-decoder after checking that the shapes and head counts fit.

A role the target has and the donor lacks is a bias (Llama and T5 have none) and is set to zero, which reproduces
the donor's projection exactly; a donor bias the target cannot hold is refused. Position schemes (absolute,
relative, rotary) and T5's unscaled dot product are part of the architecture, not of these weights: between
families with different schemes the transplant moves the projections, not the donor's exact function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.models.parameter_groups import parameter_group

#: ``(role, pattern)``: which projection of an attention module a parameter name is (searched in its name).
ROLE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (role, re.compile(pattern))
    for role, pattern in (
        ("qkv", r"\.c_attn\.(weight|bias)$"),
        ("q", r"\.(q_proj|q|query)\.(weight|bias)$"),
        ("k", r"\.(k_proj|k|key)\.(weight|bias)$"),
        ("v", r"\.(v_proj|v|value)\.(weight|bias)$"),
        ("o", r"\.(out_proj|o_proj|o|c_proj|output\.dense)\.(weight|bias)$"),
        ("relative_bias", r"\.relative_attention_bias\.weight$"),
    )
)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|block|h)\.(\d+)\.")
_CONV1D_PARENTS = ("c_attn", "c_proj")
_HEAD_FIELDS = ("decoder_attention_heads", "num_heads", "num_attention_heads", "n_head")
DONOR_KEYWORDS = ("none", "random")


@dataclass(frozen=True)
class SelfAttentionWeights:
    """The self-attention of a model, ``layers[i][role]`` (``q.weight``, ``q.bias``, ..., ``relative_bias``)."""

    layers: list[dict[str, Tensor]]
    num_heads: int
    source: str


def _role(name: str) -> str | None:
    for role, pattern in ROLE_RULES:
        if pattern.search(name):
            return role if role == "relative_bias" else f"{role}.{name.rsplit('.', 1)[1]}"
    return None


def _is_conv1d(name: str) -> bool:
    return any(f".{parent}." in name for parent in _CONV1D_PARENTS) and ".attn." in name


def attention_heads(model: nn.Module) -> int:
    """Number of attention heads of ``model``'s self-attention (its decoder's for an encoder-decoder)."""
    config = model.config
    if getattr(config, "model_type", None) == "encoder-decoder":
        config = config.decoder
    for field in _HEAD_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"{type(model).__name__}'s config names its head count none of {list(_HEAD_FIELDS)}")


def self_attention_parameters(model: nn.Module) -> list[tuple[int, str, str, nn.Parameter]]:
    """``(layer, role, name, parameter)`` of every self-attention weight: the decoder's for an encoder-decoder,
    else every layer's (a decoder-only LM or an encoder)."""
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    found = []
    for name, param in model.named_parameters():
        if is_encoder_decoder and parameter_group(name) != "decoder_self_attention":
            continue
        if not is_encoder_decoder and not re.search(r"\.(self_attn|SelfAttention|attention|attn)\.", name):
            continue
        if re.search(r"\.(crossattention|encoder_attn|EncDecAttention)\.", name) or "LayerNorm" in name:
            continue
        role, layer = _role(name), _LAYER_INDEX.search(name)
        if role is None or layer is None:
            continue
        found.append((int(layer.group(1)), role, name, param))
    if not found:
        raise ConfigError(f"found no self-attention weights in {type(model).__name__}; it cannot be a donor")
    return found


def read_self_attention(model: nn.Module, source: str) -> SelfAttentionWeights:
    """The self-attention roles of ``model`` per layer, in ``nn.Linear`` layout, detached copies."""
    by_layer: dict[int, dict[str, Tensor]] = {}
    for layer, role, name, param in self_attention_parameters(model):
        value = param.detach().clone()
        roles = by_layer.setdefault(layer, {})
        if role.startswith("qkv."):  # GPT-2's Conv1D: y = x W + b with W [in, 3 * out]
            kind = role.split(".")[1]
            chunks = value.chunk(3, dim=-1)
            for part, chunk in zip("qkv", chunks, strict=True):
                roles[f"{part}.{kind}"] = chunk.t().contiguous() if kind == "weight" else chunk
        else:
            roles[role] = value.t().contiguous() if _is_conv1d(name) and role == "o.weight" else value
    layers = [by_layer[i] for i in sorted(by_layer)]
    return SelfAttentionWeights(layers=layers, num_heads=attention_heads(model), source=source)


def load_donor(donor: str, checkpoint: str = "best") -> SelfAttentionWeights:
    """The self-attention of ``donor``: a completed trustml run directory (its ``checkpoint`` weights), or any
    Hugging Face name or local path (encoder-decoder, decoder-only LM or encoder). Nothing is downloaded when the
    name is a local path or the offline MiniLM."""
    from trustml.models.hf_encoder import resolve_pretrained

    path = Path(donor)
    if (path / "run.json").is_file():
        from trustml.run_record import load_model_from_run

        model, _ = load_model_from_run(path, checkpoint)
        network = getattr(model, "network", model)
        return read_self_attention(network, f"run {donor}")
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    location = resolve_pretrained(donor)
    try:
        config = AutoConfig.from_pretrained(location)
        loader = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModel
        network = loader.from_pretrained(location)
    except OSError as exc:
        raise ConfigError(
            f"method.donor={donor!r} is neither a trustml run directory (no run.json there) nor a model that loads "
            f"offline ({exc}); give a run directory, a save_pretrained folder, or 'none'"
        ) from None
    return read_self_attention(network, donor)


def target_roles(model: nn.Module) -> list[dict[str, nn.Parameter]]:
    """The decoder self-attention parameters of encoder-decoder ``model``, ``[layer][role]``."""
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(f"{type(model).__name__} is not an encoder-decoder; attention_swap trains one")
    by_layer: dict[int, dict[str, nn.Parameter]] = {}
    for layer, role, _, param in self_attention_parameters(model):
        by_layer.setdefault(layer, {})[role] = param
    return [by_layer[i] for i in sorted(by_layer)]


def check_layer_map(layer_map: list[int] | None, target_layers: int, donor_layers: int, donor: str) -> list[int]:
    """The donor layer of each target decoder layer: ``layer_map`` checked, or one-to-one when counts agree."""
    if layer_map is None:
        if target_layers != donor_layers:
            raise ConfigError(
                f"method.donor={donor} has {donor_layers} self-attention layers and the decoder {target_layers}; "
                f"give method.layer_map (a donor layer per decoder layer, e.g. {list(range(target_layers))})"
            )
        return list(range(target_layers))
    if len(layer_map) != target_layers:
        raise ConfigError(
            f"method.layer_map={layer_map} has {len(layer_map)} entries; the decoder has {target_layers} layers: "
            "give one donor layer index per decoder layer"
        )
    bad = [i for i in layer_map if not 0 <= i < donor_layers]
    if bad:
        raise ConfigError(
            f"method.layer_map={layer_map} names donor layer(s) {bad}; method.donor={donor} has layers "
            f"0..{donor_layers - 1}"
        )
    return list(layer_map)


@torch.no_grad()
def transplant_self_attention(model: nn.Module, donor: SelfAttentionWeights, layer_map: list[int] | None) -> int:
    """Copy ``donor``'s self-attention into ``model``'s decoder (layer ``i`` from donor layer ``layer_map[i]``).

    Checks head count and every shape first and changes nothing when one does not fit. Returns the number of
    parameters written.
    """
    targets = target_roles(model)
    mapping = check_layer_map(layer_map, len(targets), len(donor.layers), donor.source)
    plan: list[tuple[nn.Parameter, Tensor | None]] = []
    for index, (roles, donor_index) in enumerate(zip(targets, mapping, strict=True)):
        given = donor.layers[donor_index]
        extra = sorted(set(given) - set(roles) - {"relative_bias"})
        if extra:
            raise ConfigError(
                f"method.donor={donor.source} layer {donor_index} has {extra}, which decoder layer {index} cannot "
                "hold (the model has no such bias); pick a donor of a family with the same projections"
            )
        for role, param in roles.items():
            value = given.get(role)
            if value is None and role.endswith(".bias"):
                plan.append((param, None))
                continue
            if value is None:
                if role == "relative_bias":
                    continue  # T5's position bias: the donor has another position scheme; the model keeps its own
                raise ConfigError(f"method.donor={donor.source} layer {donor_index} has no {role}")
            if value.shape != param.shape:
                raise ConfigError(
                    f"method.donor={donor.source} layer {donor_index} {role} has shape {tuple(value.shape)}, decoder "
                    f"layer {index} needs {tuple(param.shape)} (hidden size / head dimension differ); pick a donor "
                    "whose attention has the same hidden size and heads, or method.donor=none"
                )
            plan.append((param, value))
    heads = attention_heads(model)
    if donor.num_heads != heads:
        raise ConfigError(
            f"method.donor={donor.source} has {donor.num_heads} attention heads and the decoder {heads}: the head "
            "dimension differs even where the shapes agree; pick a donor with the same number of heads"
        )
    for param, value in plan:
        if value is None:
            param.zero_()
        else:
            param.copy_(value.to(param.dtype))
    return sum(param.numel() for param, _ in plan)


@torch.no_grad()
def reinitialize_self_attention(model: nn.Module) -> int:
    """Draw the decoder self-attention again from the model's own initialiser (``_init_weights``, applied to each
    module that owns one of its weights and to that module's parent: T5 initialises at the attention module, BART
    and BERT at each projection), from the global torch RNG; returns the number of parameters re-drawn."""
    params = {id(p): p for roles in target_roles(model) for p in roles.values()}
    owners = {}
    for name, param in model.named_parameters():
        if id(param) in params:
            owner = name.rsplit(".", 1)[0]
            owners[owner] = None
            owners[owner.rsplit(".", 1)[0]] = None
    for param in params.values():  # transformers skips tensors it marked as loaded from a checkpoint
        param._is_hf_initialized = False
    for name in owners:
        model._init_weights(model.get_submodule(name))
    return sum(p.numel() for p in params.values())


def swap_self_attention(
    model: nn.Module, donor: str, layer_map: list[int] | None = None, checkpoint: str = "best"
) -> str:
    """Give encoder-decoder ``model`` the decoder self-attention ``donor`` names: ``none`` (its own, unchanged),
    ``random`` (:func:`reinitialize_self_attention`) or a run / model (:func:`load_donor`, then
    :func:`transplant_self_attention`). Returns where the weights now come from: ``model``, ``random`` or ``donor``."""
    if donor == "none":
        return "model"
    if donor == "random":
        reinitialize_self_attention(model)
        return "random"
    transplant_self_attention(model, load_donor(donor, checkpoint), layer_map)
    return "donor"
