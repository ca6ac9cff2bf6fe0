"""A small FedAvg federation in its own process, for the kill-and-resume test: ``python -m ... ROOT DELAY``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from tests.federation.conftest import federation, make_method, trainer_factory
from trustml.data.digits import DigitsConfig, DigitsDataModule
from trustml.federation.strategies import FedAvg


class SlowClient(pl.Callback):
    """Makes every local fit last ``delay`` seconds longer, so the run can be killed between rounds."""

    federated_scope = "client"
    client_loop_ready = True  # only sleeps: the Trainer-free client loop calls on_train_end too

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        time.sleep(self.delay)


def main(root: Path, delay: float) -> None:
    """Run (or resume, when ``root`` holds a checkpoint) the federation into ``root``; save the final model.

    5 rounds of 3 of 10 label-skewed clients; each client fit lasts ``delay`` seconds longer. The final global
    model goes to ``root/final.pt``. Called in-process too (the test's uninterrupted reference run).
    """
    torch.set_num_threads(1)
    datamodule = DigitsDataModule(DigitsConfig(batch_size=16))
    datamodule.setup("fit")
    method = make_method(datamodule)
    plugin = federation(
        FedAvg, rounds=5, num_clients=10, clients_per_round=3, seed=0, partition={"kind": "dirichlet_label"}
    )
    plugin.run(method, datamodule, trainer_factory(root, [SlowClient(delay)]))
    torch.save(method.model.state_dict(), root / "final.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
