"""Device selection on a next-word language model (issue 20, item 3): uniform vs activity-based selection of devices.

Dupuy et al. (ICASSP 2022, "Learnings from federated learning in the real world") report that on real device data,
where a few heavy devices hold much of the data, selecting devices by activity beats uniform selection, in the static
and even more in the continual setting. This script redoes that comparison with the objects the ``trustml`` CLI
builds (``data=text_lm``, ``model=hf_causal_lm``, ``method=lm``, ``federation=fedavg``), through their Python API:

* data: Topical-Chat turns (``../shared/data/topical_chat``, the three ``conversations_*`` files the experiment
  ``topical_chat_lm`` reads), split by conversation (``data.val_fraction = data.test_fraction = 0.1``); the validation
  and test splits are capped at ``EVAL_TEXTS`` turns (``data.max_eval_texts``) so that evaluating every round is
  cheap;
* devices: ``federation.partition.kind=heavy_tailed_natural`` deals whole conversations to ``--devices`` devices with
  log-normal probabilities of sigma ``--skew``, so a few devices hold many conversations and most hold few or none;
* model: a small GPT-2 trained from scratch; its WordPiece vocabulary (``VOCAB`` tokens) is fitted once on the whole
  training split and stored in ``results/lm_selection_tokenizer.json``; every run of the grid reads text with that
  same tokenizer (the stand-in for a vocabulary fixed before federated training; perplexities of different arms are
  comparable only under one tokenizer);
* clients: ``federation.client.local_steps`` steps of AdamW per selected device (the same compute per round in every
  arm, whatever the selected devices' sizes; a small device cycles over its data);
* arms: ``uniform`` (``weighting=samples``: FedAvg over the selected devices), ``activity`` with gamma 0.5 and 1
  (``weighting=samples``: the production-style biased average) and ``activity`` gamma 1 with ``weighting=unbiased``;
* settings: ``static`` and ``continual`` (``num_periods=4``, activity growing by ``arrival_growth=1.5`` per period,
  at most ``--storage-cap`` turns kept per device).

Per round the global model is evaluated on the **validation** split (the federation's round evaluation is handed a
view of the data module whose evaluation split is the validation split); the test split is evaluated once, on the
final global model. Each run appends one JSON line to ``--out`` (default ``results/lm_selection.jsonl``); runs
already there (same arm, setting, seed, kind) are skipped, so the grid resumes and splits over processes with
``--seeds/--arms/--settings``. ``--pilot`` runs the excluded pilot (uniform, static, seed ``PILOT_SEED``) that fixes
the target perplexity; ``--report`` writes ``lm_selection.png`` and the README table.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 nice -n 10 python experiments/federated/lm_selection.py --pilot
    OMP_NUM_THREADS=1 nice -n 10 python experiments/federated/lm_selection.py
    python experiments/federated/lm_selection.py --report --write-readme
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from run_grid import make_trainer_factory  # the sibling script (this one runs as a script, not with -m)

from trustml.data.text_lm import TextLMConfig, TextLMDataModule
from trustml.federation.options import FederationConfig
from trustml.federation.rounds import lightning_test_metrics
from trustml.federation.strategies import FedAvg
from trustml.methods.lm import CausalLMConfig, CausalLMMethod
from trustml.models.hf_causal_lm import HFCausalLM, HFCausalLMConfig, train_wordpiece

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1].parent / "shared" / "data" / "topical_chat"
RESULTS = HERE / "results"
TOKENIZER = RESULTS / "lm_selection_tokenizer.json"
README = HERE / "README.md"
FILES = ("conversations_valid_freq.json", "conversations_valid_rare.json", "conversations_test_freq.json")

#: the scale, fixed from the timing of one round (README section "Selection on a language model")
VOCAB = 2000
MAX_LENGTH = 48
EVAL_TEXTS = 400
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": MAX_LENGTH}
BATCH = 16
LR = 3e-3
DEFAULTS = {"rounds": 32, "devices": 300, "skew": 1.5, "clients_per_round": 10, "local_steps": 5, "storage_cap": 100}
PILOT_SEED = 100
#: target perplexity = TARGET_FACTOR x the pilot's validation perplexity after the grid's number of rounds (the rule,
#: fixed before the grid ran; the pilot ran 50 rounds, the grid's scale was then cut to 32 rounds by its timing)
TARGET_FACTOR = 1.1

ARMS: dict[str, dict[str, Any]] = {
    "uniform": {"scheme": "uniform", "weighting": "samples"},
    "activity_g0.5": {"scheme": "activity", "activity_exponent": 0.5, "weighting": "samples"},
    "activity_g1": {"scheme": "activity", "activity_exponent": 1.0, "weighting": "samples"},
    "activity_g1_unbiased": {"scheme": "activity", "activity_exponent": 1.0, "weighting": "unbiased"},
}
SETTINGS = ("static", "continual")


def load_data() -> TextLMDataModule:
    """Topical-Chat turns as ``data=text_lm`` (split by conversation; evaluation splits capped)."""
    data = TextLMDataModule(
        TextLMConfig(
            paths=[str(SHARED / name) for name in FILES],
            format="topical_chat",
            val_fraction=0.1,
            test_fraction=0.1,
            max_eval_texts=EVAL_TEXTS,
            batch_size=BATCH,
            eval_batch_size=200,
        )
    )
    data.setup("fit")
    return data


def shared_tokenizer(data: TextLMDataModule) -> str:
    """The grid's one WordPiece tokenizer (fitted on the whole training split once, then read from its file)."""
    if not TOKENIZER.is_file():
        TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
        TOKENIZER.write_text(train_wordpiece(list(data.splits["train"].inputs), VOCAB))
    return TOKENIZER.read_text()


def new_method(seed: int, tokenizer_json: str) -> CausalLMMethod:
    """A fresh GPT-2 (initialised from ``seed``) reading text with ``tokenizer_json``, trained by ``method=lm``."""
    torch.manual_seed(seed)
    model = HFCausalLM(
        HFCausalLMConfig(random_init_config=dict(GPT2), tokenizer_train_vocab_size=VOCAB, max_length=MAX_LENGTH)
    )
    model.set_tokenizer_json(tokenizer_json)
    return CausalLMMethod(CausalLMConfig(), model=model, optimizer=partial(torch.optim.AdamW, lr=LR))


def validation_view(data: TextLMDataModule) -> TextLMDataModule:
    """``data`` whose evaluation ("test") split is the validation split: what the rounds are evaluated on."""
    view = copy.copy(data)
    view.splits = {**data.splits, "test": data.splits["val"]}
    return view


def options_of(
    arm: str, setting: str, seed: int, scale: dict[str, Any], devices: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``federation.*`` options of one run (recorded with it); ``devices`` chooses the partitioner (default: the
    conversations dealt whole to heavy-tailed devices)."""
    partition: dict[str, Any] = {
        **(devices or {"kind": "heavy_tailed_natural", "group_column": "group"}),
        "num_clients": scale["devices"],
        "heavy_tail": "lognormal",
        "skew": scale["skew"],
        "seed": seed,
        "setting": setting,
    }
    if setting == "continual":
        partition.update(num_periods=4, storage_cap=scale["storage_cap"], arrival_growth=1.5)
    return {
        "rounds": scale["rounds"],
        "partition": partition,
        "selection": {"clients_per_round": scale["clients_per_round"], **ARMS[arm]},
        "client": {"local_steps": scale["local_steps"]},
        "server": {"seed": seed, "eval_every": 1},
        "runtime": {"resume": False},
    }


def run_one(data: TextLMDataModule, tokenizer_json: str, arm: str, setting: str, seed: int, scale: dict) -> dict:
    """One federated run: per-round validation perplexity, final validation and test perplexity, partition stats."""
    options = options_of(arm, setting, seed, scale)
    method = new_method(seed, tokenizer_json)
    with tempfile.TemporaryDirectory() as root:
        make_trainer = make_trainer_factory(Path(root), deterministic=False)
        start = time.perf_counter()
        FedAvg(FederationConfig(**copy.deepcopy(options))).run(method, validation_view(data), make_trainer)
        seconds = time.perf_counter() - start
        history = [json.loads(line) for line in (Path(root) / "federation" / "rounds.jsonl").read_text().splitlines()]
        stats = json.loads((Path(root) / "federation" / "partition.json").read_text())
        test = lightning_test_metrics(method, data, make_trainer)  # the final global model on the test split
    sizes = stats["samples_per_client"]
    return {
        "options": options,
        "val_perplexity": [r["test_perplexity"] for r in history],  # the rounds' evaluation split is validation
        "samples": [r.get("samples") for r in history],
        "final_val_perplexity": history[-1]["test_perplexity"],
        "test_perplexity": test["test_perplexity"],
        "test_acc": test["test_acc"],
        "seconds": seconds,
        "round_s_median": float(np.median([r["round_s"] for r in history])),
        "partition": {
            "num_devices": stats["num_clients"],
            "empty_devices": stats["empty_clients"],
            "train_turns": stats["num_samples"],
            "gini": sizes["gini"],
            "top10_share": sizes["top10_share"],
            "max": sizes["max"],
            "median": sizes["median"],
        },
    }


def done_keys(out: Path) -> set[tuple[str, str, str, int]]:
    if not out.is_file():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["kind"], r["arm"], r["setting"], r["seed"]) for r in rows}


def grid(arms: list[str], settings: list[str], seeds: list[int], scale: dict, out: Path, kind: str) -> None:
    """Run every (setting, seed, arm) not yet in ``out`` and append its record."""
    data = load_data()
    tokenizer_json = shared_tokenizer(data)
    done = done_keys(out)
    for seed in seeds:  # seed-major: a grid cut short leaves whole seeds (every arm and setting), not one setting
        for setting in settings:
            for arm in arms:
                if (kind, arm, setting, seed) in done:
                    logging.info("skip %s %s %s seed %d (in %s)", kind, arm, setting, seed, out)
                    continue
                result = run_one(data, tokenizer_json, arm, setting, seed, scale)
                record = {"kind": kind, "arm": arm, "setting": setting, "seed": seed, "scale": scale, **result}
                with out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                logging.info(
                    "%s %s %s seed %d: final val ppl %.1f, test ppl %.1f (%.0fs, round %.2fs)",
                    kind,
                    arm,
                    setting,
                    seed,
                    result["final_val_perplexity"],
                    result["test_perplexity"],
                    result["seconds"],
                    result["round_s_median"],
                )


# --- report -----------------------------------------------------------------------------------------------
def rounds_to(curve: list[float], target: float) -> int | None:
    """First round (1-based) whose validation perplexity is <= ``target``; None if never."""
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.1f} ± {arr.std(ddof=1):.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def report(out: Path, png: Path) -> str:
    """The PNG of validation perplexity vs rounds and the markdown tables (returned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    pilot = next((r for r in rows if r["kind"] == "pilot"), None)
    runs = [r for r in rows if r["kind"] == "grid"]
    if pilot is None:
        raise SystemExit(f"{out} holds no pilot run: run with --pilot first (it fixes the target)")
    rounds = {len(r["val_perplexity"]) for r in runs} or {len(pilot["val_perplexity"])}
    if len(rounds) != 1 or max(rounds) > len(pilot["val_perplexity"]):
        raise SystemExit(f"grid runs of {sorted(rounds)} rounds: every arm needs the same rounds, at most the pilot's")
    (grid_rounds,) = rounds
    reference = pilot["val_perplexity"][grid_rounds - 1]
    target = TARGET_FACTOR * reference
    by = {(r["setting"], r["arm"], r["seed"]): r for r in runs}
    settings = [s for s in SETTINGS if any(k[0] == s for k in by)]
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(6 * max(len(settings), 1), 4.2), squeeze=False)
    lines = [
        f"Target perplexity: {TARGET_FACTOR} x the pilot's validation perplexity after round {grid_rounds} "
        f"({reference:.1f}; uniform, static, seed {pilot['seed']}, excluded) = **{target:.1f}**.",
        "",
        "| setting | arm | seeds | final val ppl | final test ppl | rounds to target | reached target |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    paired = [
        "",
        "Paired differences activity − uniform, per seed (same seed = same partition, same initial model); "
        "negative test perplexity = activity better; rounds: negative = activity reaches the target sooner "
        "(a run that never reaches it counts as rounds + 1).",
        "",
        "| setting | arm | Δ test ppl per seed | Δ test ppl mean ± std | Δ rounds per seed | Δ rounds mean ± std |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for ax, setting in zip(axes[0], settings, strict=False):
        for arm in ARMS:
            seeds = sorted(k[2] for k in by if k[0] == setting and k[1] == arm)
            if not seeds:
                continue
            curves = np.array([by[(setting, arm, s)]["val_perplexity"] for s in seeds])
            x = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0, ddof=1) if len(seeds) > 1 else np.zeros(curves.shape[1])
            ax.plot(x, mean, label=f"{arm} (n={len(seeds)})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
            reached = [rounds_to(by[(setting, arm, s)]["val_perplexity"], target) for s in seeds]
            lines.append(
                f"| {setting} | {arm} | {len(seeds)} "
                f"| {mean_std([by[(setting, arm, s)]['final_val_perplexity'] for s in seeds])} "
                f"| {mean_std([by[(setting, arm, s)]['test_perplexity'] for s in seeds])} "
                f"| {mean_std([float(r) for r in reached if r is not None])} "
                f"| {sum(r is not None for r in reached)}/{len(seeds)} |"
            )
            if arm == "uniform":
                continue
            common = [s for s in seeds if (setting, "uniform", s) in by]
            if not common:
                continue
            d_test = [
                by[(setting, arm, s)]["test_perplexity"] - by[(setting, "uniform", s)]["test_perplexity"]
                for s in common
            ]
            cap = len(by[(setting, arm, common[0])]["val_perplexity"]) + 1
            d_rounds = [
                float(
                    (rounds_to(by[(setting, arm, s)]["val_perplexity"], target) or cap)
                    - (rounds_to(by[(setting, "uniform", s)]["val_perplexity"], target) or cap)
                )
                for s in common
            ]
            paired.append(
                f"| {setting} | {arm} | {', '.join(f'{d:+.1f}' for d in d_test)} | {mean_std(d_test)} "
                f"| {', '.join(f'{d:+.0f}' for d in d_rounds)} | {mean_std(d_rounds)} |"
            )
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:.1f}")
        ax.set_yscale("log")
        ax.set_title(f"{setting}: validation perplexity (mean ± std over seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel("perplexity")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    parts = {r["seed"]: r["partition"] for r in runs if r["setting"] == "static" and r["arm"] == "uniform"}
    stats = [
        "",
        "Partitions (static; the seed draws the partition, the same for every arm of a seed):",
        "",
        "| seed | devices | empty devices | training turns | Gini | top-10% share | largest device | median device |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for seed, p in sorted(parts.items()):
        stats.append(
            f"| {seed} | {p['num_devices']} | {p['empty_devices']} | {p['train_turns']} | {p['gini']:.3f} "
            f"| {p['top10_share']:.3f} | {p['max']} | {p['median']:.0f} |"
        )
    seconds = [r["seconds"] for r in runs]
    round_s = [r["round_s_median"] for r in runs]
    cost = [
        "",
        f"{len(runs)} grid runs, {sum(seconds) / 60:.1f} minutes of wall time in total (one process, one thread; "
        f"median {np.median(seconds):.0f} s per run, median round without evaluation {np.median(round_s):.2f} s)."
        if runs
        else "no grid run yet",
    ]
    return "\n".join(lines + paired + stats + cost)


BEGIN, END = "<!-- lm-selection:begin -->", "<!-- lm-selection:end -->"


def write_readme(table: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``table`` between the README's ``begin`` and ``end`` markers."""
    text = README.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{README} has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=RESULTS / "lm_selection.jsonl")
    parser.add_argument(
        "--pilot", action="store_true", help=f"run the excluded pilot (uniform, static, seed {PILOT_SEED})"
    )
    parser.add_argument("--report", action="store_true", help="write lm_selection.png and print the tables")
    parser.add_argument("--write-readme", action="store_true", help="with --report: fill the README block")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("trustml").setLevel(logging.WARNING)
    if args.report:
        table = report(args.out, HERE / "lm_selection.png")
        print(table)
        if args.write_readme:
            write_readme(table)
        return
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the study needs the Topical-Chat conversations there")
    torch.set_num_threads(1)
    scale = {name: getattr(args, name) for name in DEFAULTS}
    if args.pilot:
        grid(["uniform"], ["static"], [PILOT_SEED], scale, args.out, "pilot")
    else:
        grid(args.arms, args.settings, args.seeds, scale, args.out, "grid")


if __name__ == "__main__":
    main()
