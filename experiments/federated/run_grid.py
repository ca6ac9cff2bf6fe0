"""Uniform vs activity-based device selection, static vs continual setting, with a centralized reference.

Two cases, each run for every (selection, setting, seed) and once centrally per seed:

* ``digits``: scikit-learn digits (1,797 real images), 100 devices with Dirichlet label skew
  (``--alphas``, default 0.1 1 10), MLP 64-64-10, SGD; 10 devices per round.
* ``topical_chat``: Topical-Chat turn sentiment (8 classes), the natural partition (one device per
  conversation agent), frozen offline all-MiniLM-L6-v2 embeddings + MLP head, AdamW; 20 devices per round.
  Needs ``../shared/data/topical_chat`` (skipped with a message otherwise).

``activity`` draws devices with probability proportional to their sample count (gamma = 1) and averages
their updates by sample count (``weighting=samples``), favouring active devices as in production
(Dupuy et al., ICASSP 2022). The continual setting spreads each device's data over 4 periods and keeps at
most ``--storage-cap`` samples per device. Each run appends one JSON line (options, per-round test
accuracy and held samples, wall time) to ``results/<case>.jsonl``; ``report.py`` turns them into the
README table and PNG curves.

Usage: ``python experiments/federated/run_grid.py --cases digits topical_chat [--seeds 0 1 2]``; the
grid can be split over processes with ``--seeds``, ``--alphas``, ``--parts`` and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from trustml.data.base import TrustDataModule
from trustml.federation.options import FederationConfig
from trustml.federation.rounds import evaluate_model
from trustml.federation.strategies import FedAvg
from trustml.methods.erm import ERM, ERMConfig

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1].parent / "shared" / "data"
RESULTS = HERE / "results"


def make_trainer_factory(root: Path, deterministic: bool = True) -> Callable[..., pl.Trainer]:
    """A runner-like ``make_trainer``: CPU, quiet, deterministic algorithms unless ``deterministic`` is false;
    keyword overrides win."""

    def make_trainer(**overrides: Any) -> pl.Trainer:
        kwargs: dict[str, Any] = {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": deterministic,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "callbacks": [],
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
        }
        kwargs.update(overrides)
        return pl.Trainer(**kwargs)

    return make_trainer


# --- the two cases ---------------------------------------------------------------------------------------
def digits_case(seed: int) -> tuple[TrustDataModule, Callable[[], ERM]]:
    """Digits data and a fresh MLP+SGD method (initialised from ``seed``)."""
    from trustml.data.digits import DigitsConfig, DigitsDataModule
    from trustml.models.mlp import MLP, MLPConfig

    datamodule = DigitsDataModule(DigitsConfig(batch_size=16))
    datamodule.setup("fit")

    def method() -> ERM:
        torch.manual_seed(seed)
        model = MLP(MLPConfig(hidden_sizes=[64], dropout=0.0), num_classes=10, input_dim=64)
        return ERM(ERMConfig(), model=model, optimizer=partial(torch.optim.SGD, lr=0.1), num_classes=10)

    return datamodule, method


def topical_chat_case(seed: int, cache_dir: Path) -> tuple[TrustDataModule, Callable[[], ERM]]:
    """Topical-Chat sentiment as MiniLM embeddings (computed once, cached) and a fresh MLP-head method."""
    from trustml.data.topical_chat import TopicalChatSentimentConfig, TopicalChatSentimentDataModule
    from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

    datamodule = TopicalChatSentimentDataModule(
        TopicalChatSentimentConfig(
            data_dir=str(SHARED / "topical_chat"),
            train_files=["conversations_valid_freq.json", "conversations_valid_rare.json"],
            test_files=["conversations_test_freq.json"],
            batch_size=16,
        )
    )
    datamodule.setup("fit")
    encoder_config = HFEncoderConfig(
        freeze_encoder=True,
        cache_embeddings=True,
        cache_dir=str(cache_dir),
        max_length=64,
        head_hidden_sizes=[256],
        dropout=0.1,
    )
    encoder = HFEncoderClassifier(encoder_config, num_classes=8)
    datamodule.map_inputs(encoder.featurize)

    def method() -> ERM:
        torch.manual_seed(seed)
        model = HFEncoderClassifier(encoder_config, num_classes=8)
        return ERM(ERMConfig(), model=model, optimizer=partial(torch.optim.AdamW, lr=1e-3), num_classes=8)

    return datamodule, method


# --- one run ---------------------------------------------------------------------------------------------
def fedavg(options: dict[str, Any]) -> FedAvg:
    """FedAvg for one grid point: ``options`` (recorded flat in ``results/*.jsonl``) in the federation's sections."""
    partition = {"kind": options["partition"], "seed": options["partition_seed"], "setting": options["setting"]}
    for name in ("dirichlet_alpha", "group_column", "num_periods", "storage_cap"):
        if name in options:
            partition[name] = options[name]
    if "num_devices" in options:
        partition["num_clients"] = options["num_devices"]
    return FedAvg(
        FederationConfig(
            rounds=options["rounds"],
            partition=partition,
            selection={
                "clients_per_round": options["clients_per_round"],
                "scheme": options["selection"],
                "weighting": options["weighting"],
            },
            client={"local_epochs": options["local_epochs"]},
            server={"seed": options["seed"], "eval_every": options["eval_every"]},
            runtime={"resume": False},
        )
    )


def federated_run(datamodule: TrustDataModule, method: ERM, options: dict[str, Any]) -> dict[str, Any]:
    """Run FedAvg with ``options``; return per-round test accuracy and held samples."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        fedavg(options).run(method, datamodule, make_trainer_factory(Path(root)))
        seconds = time.perf_counter() - start
        history = [json.loads(line) for line in (Path(root) / "federation" / "rounds.jsonl").read_text().splitlines()]
        stats = json.loads((Path(root) / "federation" / "partition.json").read_text())
    return {
        "test_acc": [r["test_acc"] for r in history],
        "samples": [r["samples"] for r in history],
        "seconds": seconds,
        "num_devices": stats["num_clients"],
        "samples_per_device": stats["samples_per_client"],
        "mean_label_entropy_bits": stats["label_entropy_bits"]["mean"],
    }


def centralized_run(datamodule: TrustDataModule, method: ERM, epochs: int) -> dict[str, Any]:
    """Train on all training data with one Lightning fit; return the test accuracy."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        make_trainer_factory(Path(root))(max_epochs=epochs).fit(method, datamodule=datamodule)
        seconds = time.perf_counter() - start
    return {"test_acc": evaluate_model(method.model, datamodule.test_dataloader())["test_acc"], "seconds": seconds}


def grid(
    case: str,
    alphas: list[float],
    seeds: list[int],
    rounds: int,
    storage_cap: int,
    cache_dir: Path,
    parts: list[str],
    out: Path,
) -> None:
    """Run the ``parts`` (centralized, federated) of ``case`` and append the results to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partitions = (
        [{"partition": "dirichlet_label", "dirichlet_alpha": a, "num_devices": 100} for a in alphas]
        if case == "digits"
        else [{"partition": "natural", "group_column": "device"}]
    )
    clients = 10 if case == "digits" else 20
    for seed in seeds:
        datamodule, new_method = digits_case(seed) if case == "digits" else topical_chat_case(seed, cache_dir)
        if "centralized" in parts:
            record = {
                "case": case,
                "kind": "centralized",
                "seed": seed,
                **centralized_run(datamodule, new_method(), 15),
            }
            with out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        for partition in partitions if "federated" in parts else []:
            for setting in ("static", "continual"):
                for selection in ("uniform", "activity"):
                    options = {
                        **partition,
                        "rounds": rounds,
                        "clients_per_round": clients,
                        "selection": selection,
                        "weighting": "samples",
                        "setting": setting,
                        "seed": seed,
                        "partition_seed": seed,
                        "eval_every": 1,
                        "local_epochs": 1,
                        **({"num_periods": 4, "storage_cap": storage_cap} if setting == "continual" else {}),
                    }
                    result = federated_run(datamodule, new_method(), options)
                    record = {"case": case, "kind": "federated", "seed": seed, "options": options, **result}
                    with out.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    logging.info(
                        "%s seed %d %s %s %s: final acc %.3f (%.0fs)",
                        case,
                        seed,
                        partition,
                        setting,
                        selection,
                        result["test_acc"][-1],
                        result["seconds"],
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["digits", "topical_chat"], choices=["digits", "topical_chat"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.1, 1.0, 10.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--storage-cap", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=HERE.parents[1] / ".cache" / "trustml" / "embeddings")
    parser.add_argument(
        "--parts", nargs="+", default=["centralized", "federated"], choices=["centralized", "federated"]
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (default results/<case>.jsonl)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("trustml").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    for case in args.cases:
        if case == "topical_chat" and not (SHARED / "topical_chat").is_dir():
            logging.warning("skipping topical_chat: %s is missing", SHARED / "topical_chat")
            continue
        out = args.out or RESULTS / f"{case}.jsonl"
        grid(case, args.alphas, args.seeds, args.rounds, args.storage_cap, args.cache_dir, args.parts, out)


if __name__ == "__main__":
    main()
