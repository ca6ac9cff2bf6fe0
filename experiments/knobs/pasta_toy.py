"""PASTA steering on an instruction-following toy task (experiments/knobs/README.md, "PASTA steering ...").

Task. A prompt ``instruction: I text: T answer:`` where ``T`` is five distinct words drawn from 30 nouns and ``I``
one of three phrasings (``say/give/write the first word``) of the *default* request, answered by the first word of
``T``, or the same phrasings with ``last``, answered by the last word of ``T``. Every phrasing is four tokens, so
the two requests differ in one token of the instruction span. In the training texts only ``--rare-fraction`` of
the instructions ask for the last word, so a model that reads the instruction weakly answers with the first word.
Dev, test and the PASTA profile set hold last-word instructions only; compliance is the share of outputs whose
first word is the last word of ``T``, ``default`` the share answering with the first word of ``T``.
``--rare-kind word`` (third version) replaces the rare request by ``say/give/write the word X``, X one of the 30 nouns
not in ``T``, answered by X: once the instruction is read the answer is in it, so a model that fails on it is not
using the instruction; whether its errors are then the default answer (PASTA's case) is what ``unsteered`` shows.
Compliance is then the share of outputs whose first word is X (the reference). ``data`` writes the kind to
``data/task.json`` for ``report``.
``default_dev.jsonl`` holds first-word instructions only (the cost check: does steering hurt the default?).
Model size (``--n-embd``, ``--n-layer``, ``--n-head``; the same for every stage of one ``--work``), ``--lr`` of the
``train``/``finetune`` stage and ``--rare-fraction`` default to the first version (README).

Stages (each a ``trustml`` command run with one torch thread, ``nice 10``; everything under ``--work``):

- ``data``: ``train_lm.jsonl`` (``{"text": "instruction: ... answer: ..."}``), ``dev.jsonl``, ``test.jsonl``,
  ``profile.jsonl``, ``default_dev.jsonl`` (segments ``instruction``, ``text``, ``reference``);
- ``train``: per seed, a GPT-2 from a random config with its own WordPiece vocabulary, ``method=lm data=text_lm``
  (``--step-checkpoints``: also a checkpoint every third of an epoch, for ``select``);
- ``finetune``: per seed, the LM fine-tuned on the answers of ``train.jsonl`` (``method=knob_generator`` training),
  tested on ``dev.jsonl`` (``--init-work``: continue from another work dir's fine-tuned model);
- ``unsteered``: per seed, the fine-tuned model's own dev compliance and first-word share (no knob);
- ``select`` (fourth version): per seed, every step checkpoint of the LM generates on dev without knobs; the one
  whose unsteered dev compliance is in [0.2, 0.6], closest to 0.4, is selected (``select/seed<S>/selection.json``);
- ``sweep --split dev|test|default_dev``: per seed, ``method=knob_generator`` on the split: knob A on the
  instruction span on all heads (``values.instruction`` = ``--values``), and PASTA (``head_selection=profiled``,
  profiled on ``profile.jsonl``) for every ``--top-k`` x ``--values``; the unsteered outputs are each run's
  ``neutral_output``; the steered model is the fine-tuned one, or with ``--selected`` the checkpoint ``select``
  chose (a seed without one is skipped);
- ``report --split``: compliance per condition and seed, mean +- std over seeds, and the paired comparison per
  prompt with the unsteered output (prompts made compliant / made non-compliant, summed over seeds, and the exact
  two-sided sign test on those discordant prompts, i.e. McNemar's exact test), into ``--out`` (JSON) and a
  markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "apple bird chair dog egg fish goat hat ink jar kite lamp moon nest owl pen queen ring sun tree cup van "
    "wolf box yarn zoo bell cake door frog"
).split()
VERBS = ("say", "give", "write")
TEMPLATE = "instruction: {instruction} text: {text} answer:"


def model_options(n_embd: int = 64, n_layer: int = 3, n_head: int = 4) -> list[str]:
    """The ``model=hf_causal_lm`` options: a GPT-2 of the given size from a random config, own 300-token vocabulary
    (the defaults are the first version's model; every stage of one ``--work`` must get the same size)."""
    config = f"{{model_type: gpt2, n_embd: {n_embd}, n_layer: {n_layer}, n_head: {n_head}, n_positions: 64}}"
    return ["model.tokenizer_train_vocab_size=300", f"model.random_init_config={config}", "model.max_length=64"]


RARE_KINDS = ("last", "word")


def example(rng: random.Random, rare: bool, rare_kind: str = "last") -> dict[str, str]:
    """One example: instruction (first word or, if ``rare``, the ``rare_kind`` request: the last word, or a word
    named in the instruction), text (5 distinct words) and the answer."""
    words = rng.sample(WORDS, 5)
    verb = rng.choice(VERBS)
    if rare and rare_kind == "word":
        named = rng.choice([w for w in WORDS if w not in words])
        return {"instruction": f"{verb} the word {named}", "text": " ".join(words), "reference": named}
    instruction = f"{verb} the {'last' if rare else 'first'} word"
    return {"instruction": instruction, "text": " ".join(words), "reference": words[-1] if rare else words[0]}


def write_data(
    work: Path, n_train: int, rare_fraction: float, n_eval: int, n_profile: int, seed: int, rare_kind: str = "last"
) -> None:
    """The files of the ``data`` stage (module doc)."""
    rng = random.Random(seed)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "task.json").write_text(json.dumps({"rare_kind": rare_kind, "rare_fraction": rare_fraction}) + "\n")
    train_rows = [{"id": f"train{i}", **example(rng, rng.random() < rare_fraction, rare_kind)} for i in range(n_train)]
    lines = [json.dumps({"text": TEMPLATE.format(**e) + " " + e["reference"]}) for e in train_rows]
    (data / "train_lm.jsonl").write_text("\n".join(lines) + "\n")
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    for name, count in (("dev", n_eval), ("test", n_eval), ("profile", n_profile)):
        rows = [{"id": f"{name}{i}", **example(rng, True, rare_kind)} for i in range(count)]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_default_dev(work, n_eval, seed)
    print(f"{data}: {n_train} training texts ({rare_fraction:.1%} {rare_kind}), dev/test {n_eval}, profile {n_profile}")


def write_default_dev(work: Path, n_eval: int, seed: int) -> None:
    """``default_dev.jsonl``: ``n_eval`` first-word (default) instructions, from its own random stream (``seed + 1``)
    so the other files stay those of the first version; the cost check of steering on the default behaviour."""
    rng = random.Random(seed + 1)
    rows = [{"id": f"default_dev{i}", **example(rng, False)} for i in range(n_eval)]
    (work / "data" / "default_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def trustml(args: list[str], log_dir: Path) -> None:
    """Run the trustml CLI (one thread, nice 10) with ``TRUSTML_LOG_DIR=log_dir``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRUSTML_LOG_DIR": str(log_dir)}
    command = ["nice", "-n", "10", str(ROOT / ".venv/bin/trustml"), *args, "logger=none"]
    command.append("trainer.enable_progress_bar=false")
    print("+", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def lm_run(work: Path, seed: int, stage: str = "finetune") -> Path:
    """The newest run of ``seed`` of ``stage`` (``lm``: the language model, ``finetune``: its fine-tuned copy)."""
    runs = sorted((work / stage / f"seed{seed}" / "runs").glob("*/results.json"))
    if not runs:
        sys.exit(f"no completed run for seed {seed} under {work / stage}; run the {stage} stage")
    return runs[-1].parent


# every 47 optimizer steps (a third of an epoch of 9,000 texts at batch 64) a checkpoint stepNNNNN.ckpt, all kept: the
# candidates of ``select`` (by steps, not epochs: a second unmonitored per-epoch checkpoint would share the state key
# of the default last.ckpt callback, which Lightning refuses)
SELECT_EVERY_STEPS = 47
STEP_CHECKPOINTS = (
    "+callbacks.step_checkpoints={_target_: trustml.callbacks.checkpoint.AtomicModelCheckpoint, "
    "dirpath: '${paths.output_dir}/checkpoints', filename: 'step{step:05d}', monitor: null, save_top_k: -1, "
    f"every_n_train_steps: {SELECT_EVERY_STEPS}, auto_insert_metric_name: false}}"
)


def train(
    work: Path, seeds: list[int], epochs: int, model: list[str], lr: float = 3e-3, step_checkpoints: bool = False
) -> None:
    """The ``train`` stage: one LM per seed (``step_checkpoints``: also ``checkpoints/stepNNNNN.ckpt`` every
    ``SELECT_EVERY_STEPS`` steps, the candidates of ``select``)."""
    for seed in seeds:
        trustml(
            [
                "data=text_lm",
                "model=hf_causal_lm",
                "method=lm",
                "optimizer=adamw",
                f"optimizer.lr={lr:g}",
                f"seed={seed}",
                f"data.paths=[{work / 'data' / 'train_lm.jsonl'}]",
                "data.format=jsonl",
                "data.val_fraction=0.05",
                "data.test_fraction=0.05",
                "data.batch_size=64",
                *model,
                f"trainer.max_epochs={epochs}",
                "callbacks.model_checkpoint.monitor=val/loss",
                "callbacks.model_checkpoint.mode=min",
                *([STEP_CHECKPOINTS] if step_checkpoints else []),
            ],
            work / "lm" / f"seed{seed}",
        )


def finetune(
    work: Path, seeds: list[int], epochs: int, model: list[str], lr: float = 1e-3, init_work: Path | None = None
) -> None:
    """The ``finetune`` stage: per seed, the LM fine-tuned on the answers of ``train.jsonl`` (``method=knob_generator``
    training: the answer's token cross-entropy given the prompt, the prompt masked out), then tested on dev.
    With ``init_work``, the starting model is that work dir's fine-tuned model of the seed instead of this one's LM
    (continued fine-tuning on this work dir's data; the model size must be that run's)."""
    for seed in seeds:
        start = lm_run(work, seed, "lm") if init_work is None else lm_run(init_work, seed, "finetune")
        trustml(
            [
                "data=segments_jsonl",
                "model=hf_causal_lm",
                "method=knob_generator",
                "optimizer=adamw",
                f"optimizer.lr={lr:g}",
                f"seed={seed}",
                f"data.train_path={work / 'data' / 'train.jsonl'}",
                f"data.path={work / 'data' / 'dev.jsonl'}",
                f"data.template='{TEMPLATE}'",
                "data.batch_size=64",
                "data.eval_batch_size=50",
                f"method.model_run_dir={start}",
                *model,
                "method.generation={num_beams: 1, do_sample: false, max_new_tokens: 2}",
                f"trainer.max_epochs={epochs}",
            ],
            work / "finetune" / f"seed{seed}",
        )


def generation_options(work: Path, split: str, seed: int, model: list[str]) -> list[str]:
    """The ``trustml`` options of a generation-only ``method=knob_generator`` run on ``split`` (greedy, 2 new tokens,
    no reference scoring); the caller adds which weights generate and the knobs."""
    return [
        "data=segments_jsonl",
        "model=hf_causal_lm",
        "method=knob_generator",
        "trainer.max_epochs=0",
        f"seed={seed}",
        f"data.path={work / 'data' / f'{split}.jsonl'}",
        f"data.template='{TEMPLATE}'",
        "data.eval_batch_size=50",
        *model,
        "method.generation={num_beams: 1, do_sample: false, max_new_tokens: 2}",
        "method.score_reference=false",
    ]


def sweep(
    work: Path,
    split: str,
    seeds: list[int],
    values: str,
    top_k: str,
    profile_examples: int,
    model: list[str],
    pasta_values: str | None = None,
    selected: bool = False,
) -> None:
    """The ``sweep`` stage: all-heads knob A (bias ``values``) and PASTA (``pasta_values``, default ``values``), per
    seed, on ``split``; the fine-tuned model, or with ``selected`` the LM checkpoint ``select`` chose (a seed without
    one is skipped)."""
    for seed in seeds:
        if selected:
            choice = selected_checkpoint(work, seed)
            if choice is None:
                print(f"seed {seed}: no checkpoint in the selection window; not steered")
                continue
            source = [f"method.model_run_dir={choice[0]}", f"method.checkpoint={choice[1]}"]
        else:
            source = [f"method.model_run_dir={lm_run(work, seed)}"]
        common = [*generation_options(work, split, seed, model), *source]
        base = work / "sweep" / split / f"seed{seed}"
        trustml(["-m", *common, f"+method.knobs.prompt_attention.values.instruction={values}"], base / "all_heads")
        pasta = [
            "method.knobs.prompt_attention.head_selection=profiled",
            f"method.knobs.prompt_attention.profile_file={work / 'data' / 'profile.jsonl'}",
            f"method.knobs.prompt_attention.profile_examples={profile_examples}",
            f"method.knobs.prompt_attention.top_k={top_k}",
        ]
        pasta.append(f"+method.knobs.prompt_attention.values.instruction={pasta_values or values}")
        trustml(["-m", *common, *pasta], base / "pasta")


def _words(text: str) -> list[str]:
    return text.lower().split()


def rare_kind(work: Path) -> str:
    """The rare request of ``work``'s data (``data/task.json``; the first two versions wrote none: ``last``)."""
    task = work / "data" / "task.json"
    return json.loads(task.read_text())["rare_kind"] if task.is_file() else "last"


def complies(row: dict[str, Any], field: str, kind: str) -> bool:
    """Whether the first word of ``row[field]`` (an output) answers the rare request of ``kind``: the text's last word,
    or for ``kind="word"`` the reference."""
    wanted = _words(row["segments"]["text"])[-1:] if kind == "last" else _words(row["reference"])[:1]
    return _words(row[field])[:1] == wanted


def read_generations(job: Path) -> list[dict[str, Any]]:
    """The rows of a ``method=knob_generator`` job's ``generations.jsonl``."""
    return [json.loads(line) for line in (job / "generations.jsonl").read_text().splitlines()]


def compliance_rate(rows: list[dict[str, Any]], field: str, kind: str) -> float:
    """Share of ``rows`` whose ``field`` output answers the rare request of ``kind`` (:func:`complies`)."""
    return sum(complies(r, field, kind) for r in rows) / len(rows)


def first_word_rate(rows: list[dict[str, Any]], field: str) -> float:
    """Share of ``rows`` whose ``field`` output starts with the text's first word (the default answer)."""
    return sum(_words(r[field])[:1] == _words(r["segments"]["text"])[:1] for r in rows) / len(rows)


def job_record(job: Path, kind: str = "last") -> dict[str, Any]:
    """One sweep job: knob settings and shares of compliant (the rare request's answer: the text's last word, or for
    ``kind="word"`` the reference) / first-word answers, steered and not."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    options = dict(o.lstrip("+").split("=", 1) for o in overrides)
    rows = read_generations(job)
    results = json.loads((job / "results.json").read_text())
    record = {
        "value": float(options["method.knobs.prompt_attention.values.instruction"]),
        "top_k": int(options["method.knobs.prompt_attention.top_k"])
        if "method.knobs.prompt_attention.top_k" in options
        else None,
        "compliance": compliance_rate(rows, "output", kind),
        "default": first_word_rate(rows, "output"),
        "neutral_compliance": compliance_rate(rows, "neutral_output", kind),
        "neutral_default": first_word_rate(rows, "neutral_output"),
        "changed": results.get("test/paired_changed"),
        "examples": len(rows),
        # per prompt against the unsteered output: made compliant / made non-compliant by the steering
        "gained": sum(complies(r, "output", kind) and not complies(r, "neutral_output", kind) for r in rows),
        "lost": sum(complies(r, "neutral_output", kind) and not complies(r, "output", kind) for r in rows),
    }
    heads = job / "generations.heads.json"
    if heads.is_file():
        record["heads"] = json.loads(heads.read_text())["heads"]
    return record


def unsteered(work: Path, seeds: list[int]) -> None:
    """The ``unsteered`` stage: per seed, compliance and first-word share of the fine-tuned model's own dev outputs
    (the ``finetune`` run's test on ``dev.jsonl``, no knob): the numbers a rare fraction or training length is chosen
    on, before any steering run."""
    kind = rare_kind(work)
    for seed in seeds:
        run = lm_run(work, seed)
        rows = read_generations(run)
        comply, default = compliance_rate(rows, "output", kind), first_word_rate(rows, "output")
        print(f"seed {seed}: {run}: dev compliance {comply:.3f}, first-word (default) {default:.3f}")


SELECT_WINDOW = (0.2, 0.6)
SELECT_TARGET = 0.4


def select(work: Path, seeds: list[int], model: list[str]) -> None:
    """The ``select`` stage (fourth version): per seed, every ``stepNNNNN`` checkpoint of the LM run (``train
    --step-checkpoints``) generates on ``dev.jsonl`` without knobs; the selected checkpoint is the one whose unsteered
    dev compliance lies in ``SELECT_WINDOW`` closest to ``SELECT_TARGET`` (ties: the earliest). Writes
    ``select/seed<S>/selection.json`` (every checkpoint's compliance and first-word share, and the choice, ``null``
    when no checkpoint is in the window: that seed is not steered)."""
    kind = rare_kind(work)
    for seed in seeds:
        run = lm_run(work, seed, "lm")
        names = sorted(p.stem for p in (run / "checkpoints").glob("step*.ckpt"))
        if not names:
            sys.exit(f"{run} has no stepNNNNN checkpoints; train with --step-checkpoints")
        base = work / "select" / f"seed{seed}"
        checkpoints = [f"method.model_run_dir={run}", f"method.checkpoint={','.join(names)}"]
        options = [*generation_options(work, "dev", seed, model), *checkpoints, "method.compare_neutral=false"]
        trustml(["-m", *options], base)
        candidates = checkpoint_candidates(sorted(base.glob("multiruns/*"))[-1], kind)  # this call's sweep
        low, high = SELECT_WINDOW
        window = [c for c in candidates if low <= c["compliance"] <= high]
        chosen = min(window, key=lambda c: (abs(c["compliance"] - SELECT_TARGET), c["step"])) if window else None
        selection = {"run": str(run), "window": SELECT_WINDOW, "target": SELECT_TARGET, "selected": chosen}
        (base / "selection.json").write_text(json.dumps({**selection, "checkpoints": candidates}, indent=1) + "\n")
        trace = " ".join(f"{c['step']}:{c['compliance']:.2f}/{c['default']:.2f}" for c in candidates)
        print(f"seed {seed}: step:compliance/first-word {trace}")
        print(f"seed {seed}: selected {chosen}")


def checkpoint_candidates(sweep_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Per job of ``select``'s sweep over ``method.checkpoint``: the checkpoint, its step, and the unsteered
    compliance and first-word share of its outputs, in step order."""
    candidates = []
    for job in (g.parent for g in sweep_dir.glob("*/generations.jsonl")):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        name = dict(o.split("=", 1) for o in overrides)["method.checkpoint"]
        rows = read_generations(job)
        candidates.append(
            {
                "checkpoint": name,
                "step": int(name[4:]),
                "compliance": compliance_rate(rows, "output", kind),
                "default": first_word_rate(rows, "output"),
            }
        )
    return sorted(candidates, key=lambda c: c["step"])


def selected_checkpoint(work: Path, seed: int) -> tuple[Path, str] | None:
    """The LM run and checkpoint ``select`` chose for ``seed`` (``None``: no checkpoint in the window)."""
    file = work / "select" / f"seed{seed}" / "selection.json"
    if not file.is_file():
        sys.exit(f"no {file}; run the select stage first")
    selection = json.loads(file.read_text())
    chosen = selection["selected"]
    return None if chosen is None else (Path(selection["run"]), chosen["checkpoint"])


def report(work: Path, split: str, seeds: list[int], out: Path | None) -> None:
    """The ``report`` stage: per condition, compliance per seed and mean +- std (sample std over seeds)."""
    per_seed: dict[str, dict[int, dict[str, Any]]] = {}
    kind = rare_kind(work)
    for seed in seeds:
        for family in ("all_heads", "pasta"):
            for result in sorted((work / "sweep" / split / f"seed{seed}" / family).glob("multiruns/*/*/results.json")):
                r = job_record(result.parent, kind)
                r["job"] = str(result.parent)
                if family == "all_heads":
                    name = f"A, all heads, b={r['value']:g}"
                else:
                    name = f"PASTA top-{r['top_k']}, b={r['value']:g}"
                per_seed.setdefault(name, {})[seed] = r
                per_seed.setdefault("no steering", {})[seed] = {
                    "compliance": r["neutral_compliance"],
                    "default": r["neutral_default"],
                    "changed": 0.0,
                }
    table = {}
    header = "compliance mean ± std | per seed | first-word (default) mean | changed mean | gained / lost (sign test p)"
    print(f"| condition ({split}, {len(seeds)} seeds) | {header} |")
    print("|---|---:|---|---:|---:|---:|")

    def order(name: str) -> tuple[bool, str, float]:
        """No steering first, then by family and top-k, then by bias value."""
        family, _, value = name.partition(", b=")
        return name != "no steering", family, float(value or 0)

    for name in sorted(per_seed, key=order):
        runs = per_seed[name]
        comp = [runs[s]["compliance"] for s in sorted(runs)]
        default = [runs[s]["default"] for s in sorted(runs)]
        changed = [runs[s]["changed"] or 0.0 for s in sorted(runs)]
        std = statistics.stdev(comp) if len(comp) > 1 else 0.0
        gained = sum(runs[s].get("gained", 0) for s in runs)
        lost = sum(runs[s].get("lost", 0) for s in runs)
        p_value = binomtest(gained, gained + lost).pvalue if gained + lost else 1.0
        table[name] = {
            "per_seed": runs,
            "compliance_mean": statistics.mean(comp),
            "compliance_std": std,
            "default_mean": statistics.mean(default),
            "changed_mean": statistics.mean(changed),
            "gained": gained,
            "lost": lost,
            "sign_test_p": p_value,
        }
        print(
            f"| {name} | {statistics.mean(comp):.3f} ± {std:.3f} | {' / '.join(f'{c:.3f}' for c in comp)} | "
            f"{statistics.mean(default):.3f} | {statistics.mean(changed):.3f} | {gained} / {lost} ({p_value:.2g}) |"
        )
    families = {name.split(",")[0].split(" top")[0]: name for name in table if name != "no steering"}
    head_to_head = None
    if len(table) == 3 and set(families) == {"A", "PASTA"}:  # one setting per family (the test protocol)
        head_to_head = pasta_vs_all_heads(per_seed[families["A"]], per_seed[families["PASTA"]], kind)
        print(
            f"PASTA ({families['PASTA']}) vs all heads ({families['A']}), per prompt: PASTA alone complies on "
            f"{head_to_head['pasta_only']}, all heads alone on {head_to_head['all_heads_only']} "
            f"(McNemar exact p {head_to_head['sign_test_p']:.2g}); per-seed difference in compliance "
            f"{' / '.join(f'{d:+.3f}' for d in head_to_head['per_seed_difference'])}"
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        report_json = {"split": split, "seeds": seeds, "conditions": table, "pasta_vs_all_heads": head_to_head}
        out.write_text(json.dumps(report_json, indent=1) + "\n")


def pasta_vs_all_heads(
    all_heads: dict[int, dict[str, Any]], pasta: dict[int, dict[str, Any]], kind: str
) -> dict[str, Any]:
    """Per prompt, the two steered runs of each seed against each other: prompts where only PASTA's output complies,
    where only all heads' does (summed over seeds; McNemar's exact test on them), and PASTA - all heads compliance per
    seed."""
    pasta_only = all_only = 0
    for seed in sorted(all_heads):
        rows = {}
        for name, runs in (("all", all_heads), ("pasta", pasta)):
            rows[name] = read_generations(Path(runs[seed]["job"]))
        for a, b in zip(rows["all"], rows["pasta"], strict=True):
            pasta_only += complies(b, "output", kind) and not complies(a, "output", kind)
            all_only += complies(a, "output", kind) and not complies(b, "output", kind)
    discordant = pasta_only + all_only
    return {
        "pasta_only": pasta_only,
        "all_heads_only": all_only,
        "sign_test_p": binomtest(pasta_only, discordant).pvalue if discordant else 1.0,
        "per_seed_difference": [pasta[s]["compliance"] - all_heads[s]["compliance"] for s in sorted(all_heads)],
    }


def main() -> None:
    """Command line (module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["data", "train", "finetune", "unsteered", "select", "sweep", "report"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/knobs_pasta"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--rare-fraction", type=float, default=0.03)
    parser.add_argument("--rare-kind", choices=RARE_KINDS, default="last", help="data: the rare request (module doc)")
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--n-profile", type=int, default=32)
    parser.add_argument("--data-seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-embd", type=int, default=64, help="GPT-2 width (same for every stage of one --work)")
    parser.add_argument("--n-layer", type=int, default=3, help="GPT-2 layers (same for every stage of one --work)")
    parser.add_argument("--n-head", type=int, default=4, help="GPT-2 heads per layer (same for every stage)")
    parser.add_argument("--lr", type=float, help="learning rate of the stage (train: 3e-3, finetune: 1e-3 if unset)")
    parser.add_argument(
        "--step-checkpoints", action="store_true", help="train: keep a checkpoint every third of an epoch (select)"
    )
    parser.add_argument("--init-work", type=Path, help="finetune: start from this work dir's fine-tuned models")
    parser.add_argument("--split", default="dev", choices=["dev", "test", "default_dev"])
    parser.add_argument("--values", default="2,5,10", help="knob A bias values on the instruction span (-m list)")
    parser.add_argument("--pasta-values", help="sweep: PASTA's bias values if not --values (-m list)")
    parser.add_argument("--top-k", default="1,2,4", help="PASTA top-k heads (-m list)")
    parser.add_argument("--selected", action="store_true", help="sweep: steer the checkpoints select chose")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = model_options(args.n_embd, args.n_layer, args.n_head)
    if args.stage == "data":
        write_data(
            args.work, args.n_train, args.rare_fraction, args.n_eval, args.n_profile, args.data_seed, args.rare_kind
        )
    elif args.stage == "train":
        train(args.work, args.seeds, args.epochs, model, 3e-3 if args.lr is None else args.lr, args.step_checkpoints)
    elif args.stage == "finetune":
        finetune(args.work, args.seeds, args.epochs, model, 1e-3 if args.lr is None else args.lr, args.init_work)
    elif args.stage == "sweep":
        sweep(
            args.work,
            args.split,
            args.seeds,
            args.values,
            args.top_k,
            args.n_profile,
            model,
            args.pasta_values,
            args.selected,
        )
    elif args.stage == "select":
        select(args.work, args.seeds, model)
    elif args.stage == "unsteered":
        unsteered(args.work, args.seeds)
    else:
        report(args.work, args.split, args.seeds, args.out)


if __name__ == "__main__":
    main()
