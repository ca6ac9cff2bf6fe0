"""The evaluation models: label vocabularies, word states, the joint loss, training and scoring (tiny encoders)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

from trustml.errors import ConfigError
from trustml.synth.annotation import parse_annotated
from trustml.synth.nlu_eval import (
    IGNORE,
    IntentSlotHeads,
    JointIntentSlotModel,
    JointNluModule,
    Labels,
    NluTrainingConfig,
    evaluate,
    joint_loss,
    predict,
    train,
    word_states,
)

TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def test_labels_and_targets() -> None:
    utts = [parse_annotated("play [pop](genre) music", "PlayMusic"), parse_annotated("rain in [Big Sur](city)", "W")]
    labels = Labels.of(utts)
    assert labels.intents == ("PlayMusic", "W")
    assert labels.tags == ("O", "B-city", "I-city", "B-genre", "I-genre")
    intents, tags = labels.targets(utts + [parse_annotated("x [y](mood)", "Other")], 5)
    assert intents.tolist() == [0, 1, IGNORE]
    assert tags.tolist() == [[0, 3, 0, IGNORE, IGNORE], [0, 0, 1, 2, IGNORE], [0, IGNORE, IGNORE, IGNORE, IGNORE]]


def test_word_states_take_each_words_first_subword() -> None:
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float).reshape(2, 5, 1)
    word_index = torch.tensor([[-1, 0, 1, -1, 2], [-1, 0, -1, -1, -1]])
    words, mask = word_states(hidden, word_index)
    assert words[..., 0].tolist() == [[1, 2, 4], [6, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_joint_loss_adds_intent_and_tag_cross_entropies() -> None:
    torch.manual_seed(0)
    intent_logits, tag_logits = torch.randn(2, 3), torch.randn(2, 4, 5)
    batch = {"intent": torch.tensor([0, 2]), "tags": torch.tensor([[1, 0, IGNORE, IGNORE, IGNORE], [4, 4, 3, 2, 0]])}
    expected = F.cross_entropy(intent_logits, batch["intent"]) + F.cross_entropy(
        tag_logits.flatten(0, 1), batch["tags"][:, :4].flatten(), ignore_index=IGNORE
    )
    assert joint_loss(intent_logits, tag_logits, batch) == pytest.approx(expected.item())


@pytest.mark.parametrize("freeze", [True, False])
def test_tiny_model_fits_the_toy_data(toy, freeze: bool) -> None:
    config = NluTrainingConfig(random_init=TINY, freeze_encoder=freeze, steps=80, batch_size=8, lr=1e-2)
    nlu = train(toy, config)
    scores = evaluate(nlu, toy)
    assert scores["intent_accuracy"] == 1.0
    assert scores["slot_f1"] > 0.8


def test_only_the_last_blocks_and_the_heads_train_with_trainable_last_layers(toy) -> None:
    config = NluTrainingConfig(
        random_init={**TINY, "num_hidden_layers": 2}, trainable_last_layers=1, steps=80, batch_size=8, lr=1e-2
    )
    nlu = train(toy, config)
    assert nlu.cache is None  # the trained block changes the features: nothing is cached
    encoder = nlu.model.encoder
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
    assert all(p.requires_grad for p in nlu.model.heads.parameters())
    # the encoder as built (its random init is seeded by the config's seed), from a run that trains no block
    untrained = train(toy, NluTrainingConfig(random_init={**TINY, "num_hidden_layers": 2}, steps=1)).model.encoder
    before = dict(untrained.named_parameters())
    for name, param in encoder.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == (name in trainable), name
    scores = evaluate(nlu, toy)
    assert scores["intent_accuracy"] == 1.0 and scores["slot_f1"] > 0.8


def test_the_encoders_trained_weights_take_encoder_lr() -> None:
    encoder = AutoModel.from_config(AutoConfig.for_model(**{**TINY, "num_hidden_layers": 2}))
    encoder.requires_grad_(False)
    encoder.encoder.layer[1].requires_grad_(True)
    model = JointIntentSlotModel(encoder, IntentSlotHeads(32, 2, 3))
    optimizer = JointNluModule(model, lr=1e-2, steps=10, warmup=0.0, encoder_lr=1e-4).configure_optimizers()[
        "optimizer"
    ]
    heads, blocks = optimizer.param_groups
    assert heads["lr"] == 1e-2 and {id(p) for p in heads["params"]} == {id(p) for p in model.heads.parameters()}
    assert blocks["lr"] == 1e-4
    assert {id(p) for p in blocks["params"]} == {id(p) for p in encoder.encoder.layer[1].parameters()}
    encoder.requires_grad_(False)  # a frozen encoder: one group, the heads
    assert len(JointNluModule(model, 1e-2, 10, 0.0, 1e-4).configure_optimizers()["optimizer"].param_groups) == 1


def test_truncated_words_are_tagged_outside(toy) -> None:
    nlu = train(toy[:3], NluTrainingConfig(random_init=TINY, steps=2, batch_size=4, max_length=4))
    _, tags = predict(nlu, toy[:3])
    assert [len(t) for t in tags] == [len(u.tokens()) for u in toy[:3]]
    assert all(t[-1] == "O" for t in tags)


def test_bad_training_options() -> None:
    with pytest.raises(ConfigError, match="steps >= 1"):
        NluTrainingConfig(steps=0)
    with pytest.raises(ConfigError, match="encoder_lr must be > 0"):
        NluTrainingConfig(encoder_lr=0.0)
    with pytest.raises(ConfigError, match="trainable_last_layers must be >= 0"):
        NluTrainingConfig(trainable_last_layers=-1)
    with pytest.raises(ConfigError, match="set freeze_encoder=True or trainable_last_layers=0"):
        NluTrainingConfig(trainable_last_layers=1, freeze_encoder=False)
    with pytest.raises(ConfigError, match="trainable_last_layers=3 but the encoder has 1 layers"):
        train(
            [parse_annotated("play [pop](genre)", "PlayMusic")],
            NluTrainingConfig(random_init=TINY, trainable_last_layers=3),
        )
    with pytest.raises(ConfigError, match="training set is empty"):
        train([], NluTrainingConfig(random_init=TINY))
