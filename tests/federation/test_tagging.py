"""``method=tagging`` on ``data=snips_slots``: BIO words from SNIPS chunks, a plain run and a federated run that learn
(seqeval slot F1 far above an untrained model's), and the refusals of what cannot work.

The model is the offline MiniLM cut to its first layer, frozen, with the model's head as the token classifier: fast
enough on CPU, and its slot F1 after two epochs (about 0.6 on the 300 held-out SNIPS utterances) is far from the
untrained head's (below 0.05).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import SHARED_DATA, requires_shared_data
from tests.federation.conftest import federation, history_of, trainer_factory
from trustml.data.snips_slots import PAD_TAG, SnipsSlotsConfig, SnipsSlotsDataModule, tag_chunks, words_of
from trustml.errors import ConfigError, DataError
from trustml.federation.options import PartitionConfig
from trustml.federation.population import ClientPopulation
from trustml.federation.strategies import FedAvg
from trustml.methods.tagging import TaggingConfig, TaggingMethod, bio_names, seqeval_scores
from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

SNIPS = SHARED_DATA / "snips"


def test_snips_chunks_become_words_with_bio_tags() -> None:
    chunks = [
        {"text": "play "},
        {"text": "Trick-trick", "entity": "artist"},
        {"text": " on "},
        {"text": "Google Music", "entity": "service"},
        {"text": " 😀, café\u0301"},
    ]
    words, tags = tag_chunks(chunks, "test")
    assert words == ("play", "Trick", "-", "trick", "on", "Google", "Music", "😀", ",", "cafe")
    assert tags == ("O", "B-artist", "I-artist", "I-artist", "O", "B-service", "I-service", "O", "O", "O")
    assert words_of("it's 5_000\x00") == ["it", "'", "s", "5", "_", "000"]
    with pytest.raises(DataError, match="'text' string"):
        tag_chunks([{"entity": "x"}], "file.json: utterance 3")


def test_seqeval_scores_count_whole_chunks() -> None:
    true = [["B-0", "I-0", "O", "B-1"]]
    assert seqeval_scores(true, true)["slot_f1"] == 1.0
    half = seqeval_scores(true, [["B-0", "O", "O", "B-1"]])  # the first chunk's boundary is wrong
    assert half["slot_precision"] == half["slot_recall"] == half["slot_f1"] == 0.5
    assert bio_names(5) == ["O", "B-0", "I-0", "B-1", "I-1"]
    with pytest.raises(ConfigError, match="odd number of tags"):
        bio_names(4)


def test_a_missing_snips_folder_is_one_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path=.*not a folder"):
        SnipsSlotsDataModule(SnipsSlotsConfig(path=str(tmp_path / "nowhere"))).setup("fit")
    (tmp_path / "train_PlayMusic.json").write_text('{"PlayMusic": [{"text": "no data list"}]}')
    (tmp_path / "validate_PlayMusic.json").write_text("{}")
    with pytest.raises(DataError, match="no 'data' list of chunks"):
        SnipsSlotsDataModule(SnipsSlotsConfig(path=str(tmp_path), intents=["PlayMusic"])).setup("fit")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data": {"_target_": "trustml.data.digits.DigitsDataModule"}}, "needs data with a tag per word"),
        ({"model": {"_target_": "trustml.models.mlp.MLP"}}, "use model=hf_encoder"),
        ({"model": {"cache_embeddings": True}}, "set model.cache_embeddings=false"),
        ({"optimizer": {"_target_": "trustml.privacy.plugins.DPSGD"}}, "per-sample-gradient optimizers"),
    ],
)
def test_tagging_refuses_what_cannot_work(overrides: dict, message: str) -> None:
    cfg = OmegaConf.create(
        {
            "data": {"_target_": "trustml.data.snips_slots.SnipsSlotsDataModule"},
            "model": {"_target_": "trustml.models.hf_encoder.HFEncoderClassifier", "cache_embeddings": False},
            "optimizer": {"_target_": "trustml.optim.torch_optimizers.Adam"},
        }
    )
    cfg = OmegaConf.merge(cfg, overrides)
    with pytest.raises(ConfigError, match=message):
        TaggingMethod.validate_config(cfg)


@pytest.fixture(scope="module")
def snips() -> SnipsSlotsDataModule:
    """SNIPS slots (810 train / 90 val / 300 test utterances), tokenized for the one-layer MiniLM."""
    datamodule = SnipsSlotsDataModule(SnipsSlotsConfig(path=str(SNIPS), batch_size=32))
    datamodule.setup("fit")
    datamodule.map_inputs(tagger(datamodule).model.featurize)
    return datamodule


def tagger(datamodule: SnipsSlotsDataModule, lr: float = 0.03) -> TaggingMethod:
    """``method=tagging`` on a frozen one-layer MiniLM, deterministic head initialisation, Adam at ``lr``."""
    torch.manual_seed(0)
    config = HFEncoderConfig(cache_embeddings=False, num_layers=1, dropout=0.0, max_length=48)
    model = HFEncoderClassifier(config, num_classes=datamodule.num_classes)
    optimizer = partial(torch.optim.Adam, lr=lr)
    return TaggingMethod(TaggingConfig(), model=model, optimizer=optimizer, num_classes=datamodule.num_classes)


@requires_shared_data("snips")
def test_snips_slots_splits_hold_word_tag_rows(snips: SnipsSlotsDataModule) -> None:
    sizes = {name: len(split) for name, split in snips.splits.items()}
    assert sizes == {"train": 810, "val": 90, "test": 300}
    assert snips.label_names[0] == "O" and len(snips.label_names) % 2 == 1
    train = snips.splits["train"]
    assert train.labels.dim() == 2 and set(np.unique(train.groups["intent"])) == {
        "PlayMusic",
        "GetWeather",
        "BookRestaurant",
    }
    words = (train.labels != PAD_TAG).sum(dim=1)
    assert [len(text.split(" ")) for text in snips.raw_texts["train"]] == words.tolist()
    # tag rows cannot be skewed by label, and count as one class in the partition statistics
    with pytest.raises(ConfigError, match="label per token"):
        ClientPopulation.from_datamodule(snips, PartitionConfig(kind="dirichlet_label", num_clients=3))
    by_intent = ClientPopulation.from_datamodule(snips, PartitionConfig(kind="natural", group_column="intent"))
    assert len(by_intent) == 3 and by_intent.statistics()["label_entropy_bits"]["max_possible"] == 0.0


@requires_shared_data("snips")
def test_a_plain_tagging_run_learns_slots(snips: SnipsSlotsDataModule, tmp_path: Path) -> None:
    method = tagger(snips)
    untrained = method.evaluate_loader(snips.test_dataloader())
    trainer = trainer_factory(tmp_path)(max_epochs=2)
    trainer.fit(method, datamodule=snips)
    tested = trainer.test(method, datamodule=snips, verbose=False)[0]
    assert untrained["test_slot_f1"] < 0.05
    assert tested["test/slot_f1"] > 0.45, tested
    assert tested["test/acc"] > 0.75
    # the federation's evaluation computes what test_step logs
    assert method.evaluate_loader(snips.test_dataloader())["test_slot_f1"] == pytest.approx(tested["test/slot_f1"])


@requires_shared_data("snips")
def test_tagging_federates_with_slot_f1_in_every_round_record(snips: SnipsSlotsDataModule, tmp_path: Path) -> None:
    method = tagger(snips)
    plugin = federation(
        FedAvg, rounds=2, num_clients=3, clients_per_round=3, seed=0, client={"local_epochs": 1, "loop": "auto"}
    )
    fit = plugin.run(method, snips, trainer_factory(tmp_path))
    history = history_of(tmp_path)
    assert [r["aggregated"] for r in history] == [True, True]
    for record in history:
        assert {"test_slot_f1", "test_slot_precision", "test_slot_recall", "test_acc", "test_loss"} <= set(record)
    assert history[-1]["test_slot_f1"] > history[0]["test_slot_f1"]
    assert history[-1]["test_slot_f1"] > 0.35, history
    assert fit.results["federation/final_test_slot_f1"] == history[-1]["test_slot_f1"]
