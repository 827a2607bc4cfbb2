"""``trainer.profile_steps: [a, b]``: a ``torch.profiler`` trace of steps a..b and the top
operators of each phase of the loop.

The loop's phases (generate, reward, logprobs, train, sync: ``PhaseTimer``) are named
ranges ``phase/<name>`` in the trace (``RangedPhaseTimer``). After step ``b`` (or the last
step) each rank writes ``RUN/profile/steps_<a>-<b>_rank<r>.json`` (Chrome trace format: open
it in https://ui.perfetto.dev or chrome://tracing) and rank 0 prints a table of the
operators with the most self time in each phase. An operator belongs to the phase whose range
holds its start (so the backward pass, which may run on another thread, counts in ``train``);
operators outside every phase count in ``other``.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .metrics import PhaseTimer

logger = logging.getLogger("lightrft.trainer")

PROFILE_DIR = "profile"
PHASE_PREFIX = "phase/"
#: Operators listed per phase.
TOP_OPERATORS = 5


class RangedPhaseTimer(PhaseTimer):
    """A ``PhaseTimer`` whose phases are also ``phase/<name>`` ranges in a profiler trace."""

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        with torch.profiler.record_function(PHASE_PREFIX + phase), super().__call__(phase):
            yield


@dataclass
class OperatorTime:
    """Self time of one operator in one phase, in microseconds."""

    phase: str
    name: str
    calls: int = 0
    cpu_us: float = 0.0
    device_us: float = 0.0


class StepProfiler:
    """Profiles the steps ``[first, last]`` of ``steps`` (``None``: nothing) of a loop that
    ends at ``final_step``: ``with profiler.step(step): ...`` around each step."""

    def __init__(
        self,
        steps: Sequence[int] | None,
        run_dir: Path,
        *,
        rank: int,
        console: Console,
        final_step: int,
    ) -> None:
        self.first, self.last = (steps[0], min(steps[1], final_step)) if steps else (0, -1)
        self.run_dir = run_dir
        self.rank = rank
        self.console = console
        self._profile: torch.profiler.profile | None = None

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        if self._profile is None and self.first <= step <= self.last:
            self._profile = torch.profiler.profile(activities=_activities())
            self._profile.__enter__()
        try:
            yield
        except BaseException:
            self._stop()
            raise
        if self._profile is not None and step >= self.last:
            profile = self._stop()
            self._report(profile, step)

    def _stop(self) -> Any:
        profile, self._profile = self._profile, None
        if profile is not None:
            profile.__exit__(None, None, None)
        return profile

    def _report(self, profile: Any, step: int) -> None:
        path = self.run_dir / PROFILE_DIR / f"steps_{self.first}-{step}_rank{self.rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        profile.export_chrome_trace(str(tmp))
        os.replace(tmp, path)
        if self.rank != 0:
            return
        self.console.print(top_operators_table(profile.events(), title=_title(self.first, step)))
        self.console.print(
            Text(f"profiler trace: {path} (open in https://ui.perfetto.dev)"), soft_wrap=True
        )


def _activities() -> list[torch.profiler.ProfilerActivity]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def _title(first: int, last: int) -> str:
    steps = f"step {first}" if first == last else f"steps {first}-{last}"
    return f"Top operators per phase, {steps} (self time)"


def operator_times(events: Sequence[Any]) -> list[OperatorTime]:
    """Self CPU and device time per (phase, operator) of a profiler's ``events()``; an
    operator's phase is the ``phase/<name>`` range holding its start, else ``other``."""
    ranges = sorted(
        (e.time_range.start, e.time_range.end, e.name.removeprefix(PHASE_PREFIX))
        for e in events
        if e.name.startswith(PHASE_PREFIX)
    )
    starts = [r[0] for r in ranges]
    times: dict[tuple[str, str], OperatorTime] = {}
    for event in events:
        if event.name.startswith((PHASE_PREFIX, "ProfilerStep")):
            continue
        index = bisect.bisect_right(starts, event.time_range.start) - 1
        inside = index >= 0 and event.time_range.start <= ranges[index][1]
        phase = ranges[index][2] if inside else "other"
        entry = times.setdefault((phase, event.name), OperatorTime(phase, event.name))
        entry.calls += 1
        entry.cpu_us += event.self_cpu_time_total
        entry.device_us += event.self_device_time_total
    return list(times.values())


def top_operators_table(events: Sequence[Any], *, title: str, top: int = TOP_OPERATORS) -> Table:
    """The ``top`` operators of each phase by self time (device time when a GPU ran)."""
    times = operator_times(events)
    on_device = any(t.device_us > 0 for t in times)
    table = Table(title=title)
    table.add_column("phase")
    table.add_column("operator")
    table.add_column("calls", justify="right")
    table.add_column("self CPU ms", justify="right")
    if on_device:
        table.add_column("self GPU ms", justify="right")

    def key(t: OperatorTime) -> float:
        return t.device_us if on_device else t.cpu_us

    phases = sorted({t.phase for t in times}, key=_phase_order)
    for phase in phases:
        ranked = sorted((t for t in times if t.phase == phase), key=key, reverse=True)[:top]
        for position, entry in enumerate(ranked):
            cells: list[Text | str] = [
                Text(phase if position == 0 else ""),
                Text(entry.name),
                str(entry.calls),
                f"{entry.cpu_us / 1000:.2f}",
            ]
            if on_device:
                cells.append(f"{entry.device_us / 1000:.2f}")
            table.add_row(*cells, end_section=position == len(ranked) - 1)
    return table


#: Phases in the loop's order; others (a plugin's) after them, ``other`` last.
_PHASES = ("generate", "reward", "logprobs", "train", "sync")


def _phase_order(phase: str) -> tuple[int, str]:
    if phase in _PHASES:
        return _PHASES.index(phase), phase
    return (len(_PHASES) + (phase == "other"), phase)
