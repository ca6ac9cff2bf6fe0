"""Growth benchmark of grammar induction and of the ``trustml-synth`` CLI at real scale (issue 19).

Induction (default settings of ``conf/synth.yaml``: prior weight 1.5, greedy) on 60 / 250 / 1,000 / 2,500 / all
(5,973) utterances of the SNIPS ``train_<Intent>_full.json`` files of PlayMusic, GetWeather and BookRestaurant
(an equal share per intent, drawn with seed 0; the 60 row is the speed benchmark's case, 60 PlayMusic utterances
of ``train_PlayMusic.json``), and 10,000 = the 5,973 real ones plus 4,027 sampled from the grammar induced on
them (SNIPS has no more). Each size runs in a fresh process under an address-space limit (``--memory-mb``,
``RLIMIT_AS``), reporting wall time, CPU time of the process (``time.process_time``: the one-core cost, less
sensitive to other jobs on the machine than wall time) and peak resident memory (``ru_maxrss``). Then the CLI
command of the issue (``trustml-synth golden=train_PlayMusic_full.json budget_per_intent=50``) runs end to end
first, under the same limit and a ``--timeout``.

    OMP_NUM_THREADS=1 python experiments/synthetic_bootstrap/benchmark.py --snips ../shared/data/snips

writes ``benchmark.json`` here (``run.py --render-only`` puts its table into README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INTENTS = ("PlayMusic", "GetWeather", "BookRestaurant")
SIZES = (60, 250, 1000, 2500, "all", 10_000)


def pool(snips: Path, size: int | str) -> list:
    """The utterances of one benchmark size (see the module doc)."""
    from trustml.synth.formats import load_utterances
    from trustml.synth.synthesis import select_golden

    if size == 60:
        return select_golden(load_utterances(snips / "train_PlayMusic.json"), 60, seed=0)
    full = [u for i in INTENTS for u in load_utterances(snips / f"train_{i}_full.json")]
    if size == "all":
        return full
    if size == 10_000:
        from trustml.synth.fst import GrammarFst
        from trustml.synth.induction import InductionConfig, induce_grammar

        grammar, _ = induce_grammar(full, InductionConfig(prior_weight=1.5))
        extra = 10_000 - len(full)
        counts = {intent: extra // len(INTENTS) + (k < extra % len(INTENTS)) for k, intent in enumerate(INTENTS)}
        return full + GrammarFst(grammar).sample(counts, seed=0)
    return select_golden(full, int(size) // len(INTENTS), seed=0)


def child(snips: Path, size: int | str, out: Path) -> None:
    """Induce on one size and write its measurements to ``out`` (runs in a fresh process)."""
    from trustml.synth.induction import InductionConfig, induce_grammar

    utterances = pool(snips, size)
    t, c = time.perf_counter(), time.process_time()
    grammar, traces = induce_grammar(utterances, InductionConfig(prior_weight=1.5))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    stats = grammar.stats()["total"]
    record = {
        "size": size,
        "utterances": len(utterances),
        "intents": len(traces),
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rules": stats["rules"],
        "structural_rules": stats["structural_rules"],
        "steps": sum(tr.merges + tr.chunks for tr in traces),
        "stopped": sorted({tr.stopped for tr in traces}),
        "log_posterior": sum(tr.log_posterior_end for tr in traces),
    }
    out.write_text(json.dumps(record))


def _limit(memory_mb: int):  # noqa: ANN202 - a preexec_fn
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))

    return apply


def _load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snips", type=Path, default=HERE.parents[2] / "shared" / "data" / "snips")
    parser.add_argument("--sizes", nargs="+", default=[str(s) for s in SIZES])
    parser.add_argument("--memory-mb", type=int, default=2048, help="address-space limit of each run")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed to each run")
    parser.add_argument("--out", type=Path, default=HERE / "benchmark.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep", action="store_true", help="keep the rows (and CLI row) of --out for the sizes not run now"
    )
    parser.add_argument("--skip-cli", action="store_true", help="do not run the CLI command")
    args = parser.parse_args()
    if args.child:
        size = args.child[0] if args.child[0] == "all" else int(args.child[0])
        child(args.snips, size, Path(args.child[1]))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    old = json.loads(args.out.read_text()) if args.keep and args.out.exists() else {}
    rows = [r for r in old.get("induction", []) if str(r["size"]) not in args.sizes]
    with tempfile.TemporaryDirectory() as tmp:
        cli_row = old.get("cli") if args.skip_cli else run_cli(args, env, Path(tmp) / "cli")
        for size in args.sizes:
            out = Path(tmp) / f"{size}.json"
            load = _load_average()
            cmd = [sys.executable, __file__, "--snips", str(args.snips), "--child", size, str(out)]
            try:
                proc = subprocess.run(
                    cmd, env=env, preexec_fn=_limit(args.memory_mb), timeout=args.timeout, check=False
                )
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {args.timeout} s"
            row = json.loads(out.read_text()) if rc == 0 else {"size": size, "failed": rc}
            row["load_average_before"] = load
            rows.append(row)
            print(json.dumps(row), flush=True)
    order = [str(s) for s in SIZES]
    rows.sort(key=lambda r: order.index(str(r["size"])) if str(r["size"]) in order else len(order))
    command = "OMP_NUM_THREADS=1 python experiments/synthetic_bootstrap/benchmark.py " + shlex.join(sys.argv[1:])
    commands = [*old.get("commands", []), command]
    args.out.write_text(json.dumps({"commands": commands, "induction": rows, "cli": cli_row}, indent=1))


def run_cli(args: argparse.Namespace, env: dict[str, str], run_dir: Path) -> dict:
    """Run the issue's CLI command under the memory limit and timeout; its measurements."""
    cli = [
        str(Path(sys.executable).with_name("trustml-synth")),
        f"golden={args.snips / 'train_PlayMusic_full.json'}",
        "budget_per_intent=50",
        f"paths.log_dir={run_dir}",
        "print_results=false",
    ]
    load = _load_average()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            cli, env=env, preexec_fn=_limit(args.memory_mb), timeout=args.timeout, capture_output=True, text=True
        )
        rc: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = next(run_dir.rglob("stats.json"), None)
    report = json.loads(stats.read_text()) if stats else {}
    row = {
        "command": shlex.join(["trustml-synth", *cli[1:3]]),
        "exit_status": rc,
        "wall_s": wall,
        "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "peak_rss_mb": after.ru_maxrss / 1024,  # run first: the CLI is the only child so far
        "memory_limit_mb": args.memory_mb,
        "timings": report.get("timings"),
        "grammar_rules": report.get("grammar", {}).get("total", {}).get("rules"),
        "unique_sentences_exact": report.get("unique_sentences_exact"),
        "generated": report.get("generated"),
        "load_average_before": load,
    }
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
