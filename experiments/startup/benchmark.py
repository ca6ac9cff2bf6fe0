"""Start-up time of the ``trustml`` command: ``trustml --help`` and a one-epoch digits run, against their floors.

    .venv/bin/python experiments/startup/benchmark.py [--repeats 5]

Each command runs ``--repeats`` times as a fresh process (wall-clock seconds, median reported, with min and max);
the floors are the same interpreter doing nothing but importing what the command cannot do without: nothing
(``python -c pass``), Hydra (composition) and torch + Lightning (training). The run's own training time comes from
its ``results.json`` (``train_time_s``). Prints a Markdown table and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RUN = ["data=digits", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "print_results=false"]


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall-clock seconds of one run of ``command`` (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def measure(label: str, command: list[str], repeats: int, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """``repeats`` timings of ``command``: median, min, max."""
    times = [timed(command, cwd, env) for _ in range(repeats)]
    print(f"{label}: {', '.join(f'{t:.2f}' for t in times)}", file=sys.stderr, flush=True)
    return {"label": label, "median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    """Measure every command and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        env = {**os.environ, "TRUSTML_LOG_DIR": str(cwd / "logs"), "TRUSTML_CACHE_DIR": str(cwd / "cache")}
        rows = [
            measure("floor: `python -c pass`", [python, "-c", "pass"], args.repeats, cwd, env),
            measure(
                "floor: `import hydra, omegaconf`", [python, "-c", "import hydra, omegaconf"], args.repeats, cwd, env
            ),
            measure("`trustml --help`", [str(BIN / "trustml"), "--help"], args.repeats, cwd, env),
            measure(
                "floor: `import torch, pytorch_lightning`",
                [python, "-c", "import torch, pytorch_lightning"],
                args.repeats,
                cwd,
                env,
            ),
            measure(f"`trustml {' '.join(RUN)}`", [str(BIN / "trustml"), *RUN], args.repeats, cwd, env),
        ]
        train = [json.loads(p.read_text())["train_time_s"] for p in (cwd / "logs").glob("runs/*/results.json")]
    print("| command | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['label']} | {row['median']:.2f} | {row['min']:.2f} | {row['max']:.2f} |")
    if train:
        print(
            f"| (training inside the run: `train_time_s`) | {statistics.median(train):.2f} | {min(train):.2f} | "
            f"{max(train):.2f} |"
        )
    print(f"\nload average (1, 5, 15 min) after the runs: {os.getloadavg()}; CPUs: {os.cpu_count()}")


if __name__ == "__main__":
    main()
