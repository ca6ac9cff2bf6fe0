"""Sweep each control knob on a fine-tuned response model through the runner; table and curves into README.md.

A: knowledge bias b against knowledge F1; C: ten questions (bias on the control code) against the question ratio;
B: mixing weight lambda with the autoencoder against knowledge F1; D: self-attention bias on the current position
against distinct-n and perplexity. Each knob is one Hydra multirun into ``<log-dir>/<letter>``: by default
``trustml -m experiment=knobs_topical_chat`` (``method=knob_generator``); ``--entry generate`` runs the same sweep
through ``trustml-generate`` (the app the tables were first made with), so the two can be compared on one model.
``--knobs`` picks which to (re-)run, the tables show every knob whose sweep is in the log dir (so knobs can run in
separate processes and a final ``--knobs`` with no letters only writes the tables).

The tables, the ``--header`` text above them and the curves (``--figure``) go between the README markers
``<!-- <block>:start -->`` and ``<!-- <block>:end -->`` of ``--block`` (default ``knob_sweep``): sweeps of other
models write their own block (e.g. ``--block knob_sweep_1h --figure knob_curves_1h.png``) and leave the others;
``--block none`` writes nothing and only prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_BLOCK = "knob_sweep"
TITLES = {"A": "A: knowledge bias", "C": "C: ten questions", "B": "B: decoder mixing", "D": "D: self-attention bias"}
COLUMNS = ("knowledge_f1", "reference_f1", "question_ratio", "distinct_1", "distinct_2", "perplexity", "length")
#: ``trustml-generate``'s preset of knob C, whose ten questions both entries use.
QUESTIONS_PRESET = REPO / "conf" / "generate" / "knobs" / "questions.yaml"


def questions_file(log_dir: Path) -> Path:
    """The ten questions of :data:`QUESTIONS_PRESET`, one per line, as ``method.control_phrases_file`` reads them."""
    phrases = OmegaConf.to_container(OmegaConf.load(QUESTIONS_PRESET).control_phrases)
    path = log_dir / "questions.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{phrase}\n" for phrase in phrases))
    return path


def sweeps(autoencoder: str, entry: str, log_dir: Path, checkpoint: str) -> dict[str, tuple[str, list[str]]]:
    """Knob name -> (the swept knob, the overrides of its multirun) for ``entry`` (``method`` or ``generate``)."""
    knobs = "method.knobs" if entry == "method" else "knobs"
    if entry == "method":
        questions = [f"method.control_phrases_file={questions_file(log_dir)}"]
        secondary = [f"method.secondary_run_dir={autoencoder}"]
    else:
        questions = ["generate/knobs=questions"]
        secondary = [f"secondary.run_dir={autoencoder}", f"secondary.checkpoint={checkpoint}"]
    return {
        "A: cross-attention bias on knowledge": (
            "cross_attention.values.knowledge",
            [f"{knobs}.cross_attention.values.knowledge=0.2,0.5,1,2,5,10"],
        ),
        "C: ten questions, bias on the control code": (
            "cross_attention.values.control",
            [*questions, f"{knobs}.cross_attention.values.control=1,5,20"],
        ),
        "B: decoder mixing with the autoencoder (probability space)": (
            "mixing_weight",
            [*secondary, f"{knobs}.mixing_weight=0,0.2,0.4,0.6"],
        ),
        "D: self-attention bias on the current position": (
            "self_attention.values.current",
            [f"{knobs}.self_attention.values.current=1,5,20"],
        ),
    }


def common_overrides(
    entry: str, response: str, data_dir: str, max_examples: int, max_new_tokens: int, checkpoint: str
) -> list[str]:
    """The overrides every job of ``entry`` shares: the model (its ``checkpoint``), the turns (the first
    ``max_examples`` of test_freq, batches of 16) and greedy decoding of ``max_new_tokens``."""
    if entry == "method":
        return [
            "experiment=knobs_topical_chat",
            f"method.model_run_dir={response}",
            f"method.checkpoint={checkpoint}",
            f"data.data_dir={data_dir}",
            f"data.max_eval_examples={max_examples}",
            f"method.generation.max_new_tokens={max_new_tokens}",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "print_results=false",
        ]
    return [
        f"model.run_dir={response}",
        f"model.checkpoint={checkpoint}",
        f"data.data_dir={data_dir}",
        f"data.max_examples={max_examples}",
        f"generation.max_new_tokens={max_new_tokens}",
        "print_results=false",
    ]


def sweep_dir_of(name: str, log_dir: Path) -> Path:
    """Where the multirun of knob ``name`` writes its jobs: ``<log_dir>/<letter>``."""
    return log_dir / name.split(":")[0]


def run_sweep(name: str, entry: str, overrides: list[str], common: list[str], log_dir: Path) -> Path:
    """One multirun of ``entry`` (replacing an earlier one of the same knob); returns its sweep directory."""
    sweep_dir = sweep_dir_of(name, log_dir)
    shutil.rmtree(sweep_dir, ignore_errors=True)
    app = "trustml.cli.main" if entry == "method" else "trustml.cli.generate"
    command = [sys.executable, "-m", app, "-m", *common, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print("+", " ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(command, check=True, cwd=REPO, env=env)
    return sweep_dir


def metrics_of(results: dict[str, float]) -> dict[str, float]:
    """The :data:`COLUMNS` of one job's ``results.json``: ``trustml-generate`` names them as they are, the runner
    as ``test/<name>`` with the reference perplexity as ``test/reference_perplexity``."""
    if "test/knowledge_f1" not in results:
        return results
    named = {c: results[f"test/{c}"] for c in COLUMNS if c != "perplexity"}
    return {**named, "perplexity": results["test/reference_perplexity"]}


def collect(sweep_dir: Path, knob: str) -> list[tuple[float, dict[str, float]]]:
    """(swept value, metrics) of every job of a sweep of ``knob`` (the override key after ``knobs.``), by value."""
    rows = []
    for results in sweep_dir.glob("*/results.json"):
        overrides = json.loads((results.parent / "run.json").read_text())["overrides"]
        value = next(float(o.split("=", 1)[1]) for o in overrides if o.split("=", 1)[0].endswith(f"knobs.{knob}"))
        rows.append((value, metrics_of(json.loads(results.read_text()))))
    return sorted(rows, key=lambda row: row[0])


def markdown(tables: dict[str, tuple[str, list[tuple[float, dict[str, float]]]]], header: str) -> str:
    """``header``, then one table per knob: a row per swept value with every metric of :data:`COLUMNS`."""
    lines = [header, ""]
    for name, (key, rows) in tables.items():
        lines += [f"**{name}** (`method.knobs.{key}`)", "", "| value | " + " | ".join(COLUMNS) + " |"]
        lines.append("|---:|" + "---:|" * len(COLUMNS))
        lines += [f"| {v:g} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS) + " |" for v, m in rows]
        lines.append("")
    return "\n".join(lines)


def plot(tables: dict[str, tuple[str, list[tuple[float, dict[str, float]]]]], path: Path) -> None:
    """One panel per knob: its headline metric(s) against the swept value, saved to ``path``."""
    shown = {"A": ["knowledge_f1"], "C": ["question_ratio"], "B": ["knowledge_f1"], "D": ["distinct_2", "perplexity"]}
    fig, axes = plt.subplots(1, len(tables), figsize=(4 * len(tables), 3.2), squeeze=False)
    for ax, (name, (key, rows)) in zip(axes[0], tables.items(), strict=True):
        for i, metric in enumerate(shown[name[0]]):
            target = ax if i == 0 else ax.twinx()
            target.plot([v for v, _ in rows], [m[metric] for _, m in rows], marker="o", color=f"C{i}", label=metric)
            target.set_ylabel(metric, color=f"C{i}")
        if "mixing" in key:
            ax.set_xlabel(key.split(".")[-1])
        else:
            ax.set_xscale("log")
            ax.set_xlabel(f"b ({key.split('.')[-1]}, log scale)")
        ax.set_title(TITLES[name[0]], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markers(block: str) -> tuple[str, str]:
    """The README markers that delimit ``block``."""
    if not block or any(c in block for c in "<>- \n"):
        raise ValueError(f"block name {block!r} must be non-empty, without spaces, '<', '>' or '-'")
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


def write_block(readme: Path, block: str, content: str) -> None:
    """Put ``content`` between the markers of ``block`` in ``readme`` (appended when absent); the rest stays as is."""
    start, end = markers(block)
    text = readme.read_text() if readme.is_file() else ""
    wrapped = f"{start}\n{content}\n{end}"
    if start in text:
        if end not in text[text.index(start) :]:
            raise ValueError(f"{readme} has {start} but no {end} after it")
        text = text[: text.index(start)] + wrapped + text[text.index(end, text.index(start)) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + wrapped + "\n"
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--response-run", required=True, help="run dir of the method=seq2seq response model")
    parser.add_argument("--autoencoder-run", required=True, help="run dir of the method=seq2seq autoencoder")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "topical_chat"))
    parser.add_argument("--max-examples", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--log-dir", default=str(HERE / "runs" / "sweep"))
    parser.add_argument("--header", default="", help="text above the tables (model, data, commands)")
    parser.add_argument("--out-dir", default=str(HERE), help="folder of the README.md and the figure to write")
    parser.add_argument(
        "--block", default=DEFAULT_BLOCK, help="README marker name of this sweep's tables (one block per model)"
    )
    parser.add_argument("--figure", default="knob_curves.png", help="file name of the curves, beside the README")
    parser.add_argument("--knobs", nargs="*", default=["A", "C", "B", "D"], help="which knob sweeps to (re-)run")
    parser.add_argument(
        "--entry",
        choices=("method", "generate"),
        default="method",
        help="method: trustml -m experiment=knobs_topical_chat (method=knob_generator); generate: trustml-generate -m",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="last",
        help="the checkpoint of both runs (a run stopped by a step budget mid-epoch has no best.ckpt)",
    )
    args = parser.parse_args()
    unknown = set(args.knobs) - {name[0] for name in TITLES}
    if unknown:
        parser.error(f"--knobs {sorted(unknown)} unknown; pick from {sorted(TITLES)}")
    if args.block != "none":
        try:
            markers(args.block)
        except ValueError as exc:
            parser.error(f"--block: {exc}")
    common = common_overrides(
        args.entry, args.response_run, args.data_dir, args.max_examples, args.max_new_tokens, args.checkpoint
    )
    tables = {}
    log_dir = Path(args.log_dir)
    for name, (key, overrides) in sweeps(args.autoencoder_run, args.entry, log_dir, args.checkpoint).items():
        if name[0] in args.knobs:
            run_sweep(name, args.entry, overrides, common, log_dir)
        rows = collect(sweep_dir_of(name, log_dir), key)
        if rows:
            tables[name] = (key, rows)
    if not tables:
        parser.error(f"no knob sweep results under {log_dir}; run with --knobs A C B D")
    if args.block != "none":
        out_dir = Path(args.out_dir)
        plot(tables, out_dir / args.figure)
        figure = f"![knob curves]({args.figure})"
        write_block(out_dir / "README.md", args.block, f"{markdown(tables, args.header)}\n{figure}")
    print(markdown(tables, args.header))


if __name__ == "__main__":
    main()
