"""The natural partition on real Topical-Chat data: one client per conversation agent."""

from __future__ import annotations

import numpy as np

from tests.conftest import SHARED_DATA, requires_shared_data
from trustml.federation.options import PartitionConfig
from trustml.federation.population import ClientPopulation


@requires_shared_data("topical_chat")
def test_natural_partition_of_topical_chat_has_one_client_per_conversation_agent() -> None:
    from trustml.data.topical_chat import TopicalChatSentimentConfig, TopicalChatSentimentDataModule

    datamodule = TopicalChatSentimentDataModule(
        TopicalChatSentimentConfig(
            data_dir=str(SHARED_DATA / "topical_chat"),
            train_files=["conversations_valid_freq.json"],
            test_files=["conversations_test_freq.json"],
            max_conversations=60,
        )
    )
    datamodule.setup("fit")
    groups = datamodule.splits["train"].groups["device"]
    population = ClientPopulation.from_datamodule(datamodule, PartitionConfig(kind="natural"))
    stats = population.statistics()
    assert stats["num_clients"] == len(np.unique(groups)) and stats["empty_clients"] == 0
    assert stats["num_samples"] == len(groups)
    for rows, name in zip(population.partition, population.names, strict=True):
        assert set(groups[rows]) == {name}
    assert 0 < stats["label_entropy_bits"]["mean"] < np.log2(8)
