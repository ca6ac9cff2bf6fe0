"""The latency benchmark's pairing of each knob call with vanilla calls (experiments/knobs/bench_latency.py)."""

from __future__ import annotations

import importlib.util
import itertools
import time
from argparse import Namespace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "knobs" / "bench_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drifting_clock(bench, monkeypatch, cost: dict[str, float]) -> list[str]:
    """Replace the timer: call number i of a condition costs ``cost[condition] * (1 + 0.1 i)`` seconds (a machine
    slowing down steadily); returns the list the called conditions are appended to."""
    called: list[str] = []
    counter = itertools.count()

    def timed(args, run):
        name = run()
        called.append(name)
        seconds = cost[name] * (1 + 0.1 * next(counter))
        return seconds, seconds

    monkeypatch.setattr(bench, "timed", timed)
    return called


def test_sandwich_puts_a_vanilla_call_on_each_side_of_every_condition_and_cancels_drift(bench, monkeypatch):
    cost = {bench.VANILLA: 1.0, "knob": 1.0, "double": 2.0}
    called = drifting_clock(bench, monkeypatch, cost)
    runs = {name: (lambda n=name: n) for name in cost}
    args = Namespace(design="sandwich", order_seed=0, warmup=1, repeats=3, device="cpu")

    measured = bench.measure(args, runs)

    for repeat in range(4):
        calls = called[repeat * 5 : (repeat + 1) * 5]
        assert calls[0::2] == [bench.VANILLA] * 3
        assert sorted(calls[1::2]) == ["double", "knob"]
    assert len(measured.cpu[bench.VANILLA]) == 9 and len(measured.cpu["knob"]) == 3
    assert measured.paired["knob"] == pytest.approx([1.0] * 3)
    assert measured.paired["double"] == pytest.approx([2.0] * 3)
    assert [call["repeat"] for call in measured.sequence] == [0] * 5 + [1] * 5 + [2] * 5


def test_shuffled_pairs_each_condition_with_the_vanilla_call_of_its_repeat(bench, monkeypatch):
    cost = {bench.VANILLA: 1.0, "knob": 1.0}
    called = drifting_clock(bench, monkeypatch, cost)
    runs = {name: (lambda n=name: n) for name in cost}
    args = Namespace(design="shuffled", order_seed=0, warmup=0, repeats=4, device="cpu")

    measured = bench.measure(args, runs)

    assert called.count(bench.VANILLA) == 4 and called.count("knob") == 4
    for repeat in range(4):
        first, second = called[2 * repeat : 2 * repeat + 2]
        ratio = (1 + 0.1 * (2 * repeat + (first == bench.VANILLA))) / (1 + 0.1 * (2 * repeat + (first == "knob")))
        assert measured.paired["knob"][repeat] == pytest.approx(ratio)
        assert {first, second} == {bench.VANILLA, "knob"}


def test_knob_work_clock_counts_hooks_registered_inside_it_once_and_generate_separately(bench) -> None:
    import torch
    from torch import nn

    def busy(seconds: float) -> None:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    outer, inner = nn.Linear(2, 2), nn.Linear(2, 2)
    before = outer.register_forward_pre_hook(lambda *_: busy(0.05))
    clock = {"hooks": 0.0, "generate": 0.0}
    register = nn.Module.register_forward_hook
    with bench.knob_work_clock(clock):
        inner.register_forward_hook(lambda *_: busy(0.02))
        outer.register_forward_hook(lambda *_: (busy(0.03), inner(torch.zeros(2)))[0])
        outer(torch.zeros(2))
    assert 0.05 <= clock["hooks"] < 0.065  # the nested hook counts inside its caller; the hook from before not at all
    assert clock["generate"] == 0.0
    assert nn.Module.register_forward_hook is register
    timed_before = clock["hooks"]
    inner.register_forward_hook(lambda *_: busy(0.02))  # registered after the block: not timed
    inner(torch.zeros(2))
    assert clock["hooks"] - timed_before < 0.03
    before.remove()


def test_a_readme_without_the_family_markers_is_refused_before_anything_is_measured(bench, tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench_latency:start -->\nold\n<!-- bench_latency:end -->\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="bench_latency_causal_sandwich:start"):
        bench.check_markers(readme, bench.markers("causal", "sandwich"))
    with pytest.raises(SystemExit, match="lacks"):
        bench.check_markers(tmp_path / "missing.md", bench.markers("seq2seq", "shuffled"))
    bench.write_between(readme, bench.markers("seq2seq", "shuffled"), "new")
    assert readme.read_text(encoding="utf-8") == "<!-- bench_latency:start -->\nnew\n<!-- bench_latency:end -->\n"
