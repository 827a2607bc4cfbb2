"""trainer.profile_steps: the trace of the profiled steps (Chrome JSON), the top operators per
phase, and the configuration check. The loop's own profiled run is in
test_saved_rollouts.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO

import pytest
import torch
from rich.console import Console

from lightrft_core.config import ConfigError, load_config
from lightrft_core.trainer.profiling import (
    RangedPhaseTimer,
    StepProfiler,
    operator_times,
    top_operators_table,
)


def profiled_loop(run_dir, steps, *, final_step, rank=0, fail_at=None) -> str:
    """``final_step`` steps of a small matmul 'loop' (generate: a matmul; train: its backward)
    under a ``StepProfiler``; returns what the console printed."""
    console = Console(file=StringIO(), width=150)
    profiler = StepProfiler(steps, run_dir, rank=rank, console=console, final_step=final_step)
    weight = torch.randn(32, 32, requires_grad=True)
    for step in range(1, final_step + 1):
        with profiler.step(step):
            timer = RangedPhaseTimer()
            with timer("generate"):
                out = weight @ weight
            with timer("train"):
                out.tanh().sum().backward()
            if step == fail_at:
                raise RuntimeError("step failed")
    assert set(timer.pop()) == {"time/generate", "time/train"}  # still a PhaseTimer
    return console.file.getvalue()  # type: ignore[attr-defined]


def trace_phases(path) -> list[str]:
    events = json.loads(path.read_text())["traceEvents"]
    return [e["name"] for e in events if e.get("name", "").startswith("phase/")]


def test_the_trace_holds_the_profiled_steps_and_the_table_prints(tmp_path) -> None:
    printed = profiled_loop(tmp_path, [2, 3], final_step=4)
    trace = tmp_path / "profile" / "steps_2-3_rank0.json"
    assert [p.name for p in trace.parent.iterdir()] == [trace.name]  # no temporary file left
    assert sorted(trace_phases(trace)) == ["phase/generate"] * 2 + ["phase/train"] * 2
    assert "Top operators per phase, steps 2-3 (self time)" in printed
    lines = printed.splitlines()
    generate = next(i for i, line in enumerate(lines) if "│ generate" in line)
    train = next(i for i, line in enumerate(lines) if "│ train" in line)
    assert generate < train  # the loop's order
    assert "aten::mm" in lines[generate]  # the matmul is the generate phase's top operator
    assert str(trace) in printed


def test_a_range_past_the_last_step_ends_with_the_run(tmp_path) -> None:
    printed = profiled_loop(tmp_path, [3, 10], final_step=4)
    trace = tmp_path / "profile" / "steps_3-4_rank0.json"
    assert trace_phases(trace).count("phase/train") == 2
    assert "steps 3-4" in printed


def test_other_ranks_write_their_trace_and_print_nothing(tmp_path) -> None:
    printed = profiled_loop(tmp_path, [1, 1], final_step=2, rank=1)
    assert (tmp_path / "profile" / "steps_1-1_rank1.json").is_file()
    assert printed == ""


def test_a_failing_step_stops_the_profiler(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="step failed"):
        profiled_loop(tmp_path, [1, 3], final_step=3, fail_at=2)
    assert not torch.autograd.profiler._is_profiler_enabled
    assert not (tmp_path / "profile").exists()


def test_no_range_profiles_nothing(tmp_path) -> None:
    assert profiled_loop(tmp_path, None, final_step=2) == ""
    assert not (tmp_path / "profile").exists()


@dataclass
class Span:
    start: float
    end: float


@dataclass
class Event:
    """The fields of a profiler ``FunctionEvent`` that ``operator_times`` reads."""

    name: str
    start: float
    end: float
    self_cpu_time_total: float = 0.0
    self_device_time_total: float = 0.0

    @property
    def time_range(self) -> Span:
        return Span(self.start, self.end)


def test_operators_count_in_the_phase_their_start_falls_in() -> None:
    events = [
        Event("phase/generate", 0, 100),
        Event("aten::mm", 10, 30, self_cpu_time_total=20),
        Event("aten::mm", 40, 45, self_cpu_time_total=5),
        Event("phase/train", 200, 400),
        Event("aten::mm", 250, 260, self_cpu_time_total=10, self_device_time_total=7),
        Event("MmBackward0", 390, 420, self_cpu_time_total=3),  # starts inside, ends after
        Event("aten::add", 150, 160, self_cpu_time_total=2),  # between phases
        Event("ProfilerStep#2", 0, 400, self_cpu_time_total=1),
    ]
    times = {(t.phase, t.name): (t.calls, t.cpu_us, t.device_us) for t in operator_times(events)}
    assert times == {
        ("generate", "aten::mm"): (2, 25.0, 0.0),
        ("train", "aten::mm"): (1, 10.0, 7.0),
        ("train", "MmBackward0"): (1, 3.0, 0.0),
        ("other", "aten::add"): (1, 2.0, 0.0),
    }
    console = Console(file=StringIO(), width=120)
    console.print(top_operators_table(events, title="t", top=1))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "self GPU ms" in text  # a device time was measured: ranked by it
    rows = [line.split("│")[1:4] for line in text.splitlines() if line.count("│") > 4]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["generate", "aten::mm", "2"],
        ["train", "aten::mm", "1"],  # top 1 by device time
        ["other", "aten::add", "1"],
    ]


@pytest.mark.parametrize("steps", ["[3,2]", "[0,2]", "[2]", "[1,2,3]"])
def test_profile_steps_must_be_a_range_of_steps(steps) -> None:
    with pytest.raises(ConfigError, match="trainer.profile_steps must be"):
        load_config(None, [f"trainer.profile_steps={steps}"])
