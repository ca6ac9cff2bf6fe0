"""The ``fairness`` callback: hand-checked metrics of a fixed bag-of-words model, and a whole tiny-BERT run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from tests.conftest import compose_train
from trustml.data.digits import DigitsConfig, DigitsDataModule
from trustml.data.text_classification import TextClassificationConfig, TextClassificationDataModule
from trustml.errors import ConfigError
from trustml.fairness.callback import FairnessMetrics
from trustml.runner import run

CPU = torch.device("cpu")
WORDS = ("she", "he", "good")


class FemaleMeansPositive(nn.Module):
    """Bag-of-words features; logits ``[0, 4 * (she - he)]``: predicts ``pos`` exactly for texts with "she"."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(len(WORDS), 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [4.0, -4.0, 0.0]]))
            self.linear.bias.zero_()

    def featurize(self, texts: list[str]) -> Tensor:
        return torch.tensor([[float(w in t.lower().split()) for w in WORDS] for t in texts])

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def _jsonl(path: Path, rows: list[tuple[str, str, str]]) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": y, "who": w}) + "\n" for t, y, w in rows))
    return str(path)


def _data(tmp_path: Path, test_rows: list[tuple[str, str, str]]) -> TextClassificationDataModule:
    train = _jsonl(tmp_path / "train.jsonl", [("a good one", "pos", "x"), ("a bad one", "neg", "y")])
    test = _jsonl(tmp_path / "test.jsonl", test_rows)
    config = TextClassificationConfig(train_path=train, val_path=train, test_path=test, group_field="who")
    module = TextClassificationDataModule(config)
    module.setup("fit")
    return module


TEST = [
    ("She is good", "pos", "x"),
    ("She is bad", "neg", "y"),
    ("She left", "pos", "x"),
    ("He is good", "pos", "y"),
    ("He is bad", "neg", "x"),
    ("He left", "neg", "y"),
    ("It is good", "pos", "x"),
]


def _measure(module: TextClassificationDataModule, **options: object) -> dict:
    model = FemaleMeansPositive()
    module.map_inputs(model.featurize)  # as the runner does: the callback must find the raw texts again
    return FairnessMetrics(**options).measure(model, module, CPU)


def test_proxy_group_counterfactual_and_aps_by_hand(tmp_path: Path) -> None:
    results = _measure(_data(tmp_path, TEST))
    assert {k: results[f"fairness/count/{k}"] for k in ("female", "male", "none")} == {
        "female": 3,
        "male": 3,
        "none": 1,
    }
    assert results["fairness/n_compared"] == 6  # "none" is not a compared group
    # female: all predicted pos, labels pos/neg/pos -> 2/3; male: all predicted neg, labels pos/neg/neg -> 2/3
    assert results["fairness/accuracy/female"] == pytest.approx(2 / 3)
    assert results["fairness/accuracy/male"] == pytest.approx(2 / 3)
    assert results["fairness/accuracy_difference"] == pytest.approx(0.0)
    assert results["fairness/demographic_parity_difference"] == pytest.approx(1.0)  # P(pos|f)=1, P(pos|m)=0
    assert results["fairness/equalized_odds_difference"] == pytest.approx(1.0)  # TPR_pos: 1 vs 0
    # every gendered text flips; the predicted class's probability moves from sigmoid(4) to sigmoid(-4)
    assert results["fairness/cf_n_changed"] == 6 and results["fairness/flip_rate"] == 1.0
    sig = 1 / (1 + math.exp(-4))
    assert results["fairness/mean_abs_prob_change"] == pytest.approx(sig - (1 - sig), rel=1e-5)
    # feature inputs: the protected-status model separates she/he, and the prediction moves with those features
    assert results["fairness/aps_protected_model_acc"] == 1.0
    assert results["fairness/aps"] > 0 and results["fairness/aps_n"] == len(TEST)
    assert not any(k.startswith("fairness/skipped") for k in results)


def test_a_group_column_and_a_single_group(tmp_path: Path) -> None:
    by_column = _measure(_data(tmp_path, TEST), protected_column="group", counterfactual=False)
    assert by_column["fairness/count/x"] == 4 and by_column["fairness/count/y"] == 3
    # x: She is good(pos ok), She left(pos ok), He is bad(neg ok), It is good(pred neg, wrong) -> 3/4
    assert by_column["fairness/accuracy/x"] == pytest.approx(3 / 4)
    assert "fairness/flip_rate" not in by_column

    (tmp_path / "one").mkdir()
    single = _measure(_data(tmp_path / "one", [r for r in TEST if not r[0].startswith("She")]))
    assert (
        "male" in single["fairness/skipped_group_metrics"]
        and "fewer than two" in single["fairness/skipped_group_metrics"]
    )
    assert single["fairness/skipped_aps"] == single["fairness/skipped_group_metrics"]
    assert single["fairness/flip_rate"] == 1.0  # the counterfactual needs no second group
    assert not any(isinstance(v, float) and math.isnan(v) for v in single.values())


def test_options_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="protected_column='gender' is not a group column.*'group'"):
        FairnessMetrics(protected_column="gender").check_data(_data(tmp_path, TEST))
    digits = DigitsDataModule(DigitsConfig())
    digits.setup("fit")
    with pytest.raises(ConfigError, match="protected_column=proxy derives the attribute from texts"):
        FairnessMetrics().check_data(digits)
    with pytest.raises(ConfigError, match="counterfactual=false"):
        FairnessMetrics(protected_column="x", counterfactual=True).check_data(digits)
    with pytest.raises(ConfigError, match="batch_size"):
        FairnessMetrics(batch_size=0)
    with pytest.raises(ConfigError, match="callbacks.fairness.word_pairs"):
        FairnessMetrics(word_pairs=str(tmp_path / "missing.yaml"))


def _gendered_reviews(path: Path) -> str:
    people = [
        "he",
        "she",
        "John",
        "Mary",
        "my brother",
        "my sister",
        "the king",
        "the queen",
        "his father",
        "her mother",
    ]
    pos = ["loved the wonderful film", "enjoyed the great show", "liked the lovely concert"]
    neg = ["hated the terrible film", "disliked the awful show", "despised the boring concert"]
    rows = []
    for i in range(60):
        label = "pos" if (i // 2) % 2 == 0 else "neg"
        text = f"{people[i % len(people)]} {(pos if label == 'pos' else neg)[i % 3]}"
        rows.append({"text": text[0].upper() + text[1:], "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_tiny_bert_run_writes_fairness_results(tmp_path: Path) -> None:
    overrides = [
        "data=text_classification",
        f"data.path={_gendered_reviews(tmp_path / 'reviews.jsonl')}",
        "data.batch_size=16",
        "model=hf_tiny",
        "model.dropout=0",
        "optimizer.lr=0.05",
        "trainer.max_epochs=150",
        "callbacks=fairness",
    ]
    results = run(compose_train(overrides, tmp_path / "run")).results
    assert results["test/acc"] >= 0.9  # the head on frozen random tiny-BERT embeddings learned the task (chance 0.5)
    for key in (
        "fairness/flip_rate",
        "fairness/mean_abs_prob_change",
        "fairness/accuracy/female",
        "fairness/accuracy/male",
        "fairness/demographic_parity_difference",
        "fairness/equalized_odds_difference",
        "fairness/aps",
    ):
        assert math.isfinite(results[key]), key
    assert results["fairness/cf_n_changed"] == results["fairness/n_test"] == 12  # every text names someone
    assert 0.0 <= results["fairness/flip_rate"] <= 1.0 and results["fairness/aps"] > 0

    bad = [*overrides[:-2], "trainer.max_epochs=1", "callbacks=fairness", "callbacks.fairness.protected_column=gender"]
    with pytest.raises(ConfigError, match="callbacks.fairness.protected_column='gender'"):
        run(compose_train(bad, tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused when training starts, not after it


def test_aps_on_token_ids_of_an_encoder_classifier(tmp_path: Path) -> None:
    """Token inputs (a trained/uncached encoder): APS over word embeddings, the protected model on compared rows."""
    from trustml.fairness.sensitivity import (
        pooled_input_embeddings,
        token_prediction_sensitivity,
        train_protected_model,
    )
    from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

    torch.manual_seed(0)
    bert = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    bert |= {"intermediate_size": 32, "vocab_size": 30522, "max_position_embeddings": 64}
    config = HFEncoderConfig(random_init_config=bert, freeze_encoder=True, trainable_last_layers=1, max_length=32)
    model = HFEncoderClassifier(config, num_classes=2)
    module = _data(tmp_path, TEST)
    module.map_inputs(model.featurize)
    assert isinstance(module.splits["test"].inputs, dict)  # token ids, not features
    results = FairnessMetrics(sensitivity_weights="predicted", counterfactual=False).measure(model, module, CPU)
    assert results["fairness/aps_input_space"] == "word_embeddings"
    assert results["fairness/aps_class_weights"] == "predicted" and results["fairness/aps_n"] == len(TEST)
    # the same numbers by hand: protected model on the 6 gendered texts (the "none" one excluded), APS on all 7
    inputs = module.splits["test"].inputs
    rows = torch.tensor([0, 1, 2, 3, 4, 5])
    pooled = pooled_input_embeddings(model, {k: v[rows] for k, v in inputs.items()})
    protected, accuracy = train_protected_model(pooled, ["female"] * 3 + ["male"] * 3)
    expected = token_prediction_sensitivity(model, protected, inputs, class_weights="predicted")
    assert results["fairness/aps_protected_model_acc"] == accuracy == 1.0  # she/he words separate the groups
    assert results["fairness/aps"] == pytest.approx(expected.aps, rel=1e-5) and results["fairness/aps"] > 0
    with pytest.raises(ConfigError, match="sensitivity_weights='softmax'"):
        FairnessMetrics(sensitivity_weights="softmax")
    # a sample of the test inputs: the mean over the same seeded rows
    sampled = FairnessMetrics(sensitivity_weights="predicted", counterfactual=False, sensitivity_max_samples=3)
    sampled_results = sampled.measure(model, module, CPU)
    rows3 = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(TEST), size=3, replace=False)))
    assert sampled_results["fairness/aps_n"] == 3
    assert sampled_results["fairness/aps"] == pytest.approx(expected.per_sample[rows3].mean().item(), rel=1e-5)
    with pytest.raises(ConfigError, match="sensitivity_max_samples must be >= 1"):
        FairnessMetrics(sensitivity_max_samples=0)
