"""``Tracker``: where a run's record goes (the console, ``metrics.jsonl``, TensorBoard,
W&B, MLflow ...).

Users list trackers by name in ``logging.trackers``. Only rank 0 builds them. A tracker
receives, in this order: ``start`` once with the run (its id, folder and resolved
configuration), ``log_metrics`` per logged step, ``log_samples`` for tables of sampled
responses, ``log_summary`` once at the end, then ``close``. A call that raises is reported
once (one line naming the tracker) and that tracker is switched off; training goes on.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .component import Component

#: One cell of a samples table.
Cell = str | int | float | bool | None
#: A samples table: one mapping per row, every row with the same columns in the same order
#: (e.g. ``{"prompt": ..., "response": ..., "reward": 1.0}``).
SamplesTable = Sequence[Mapping[str, Cell]]


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker learns when the run starts.

    ``run_id`` is LightRFT's run id: kept across resumes (it lives in the run folder and in
    every checkpoint), so a tracker continues its own run by it. ``config`` is the resolved
    configuration as flat ``section.key`` JSON values (the hyperparameters).
    ``resume_step`` is the step a resumed run continues after (``None`` on a fresh start):
    the next logged step is above it.
    """

    run_id: str
    name: str
    output_dir: Path
    config: Mapping[str, Any]
    resume_step: int | None = None


class Tracker(Component):
    """Records a run: its configuration, metrics per step, samples tables and a summary."""

    kind: ClassVar[str] = "tracker"

    @abstractmethod
    def start(self, run: TrackedRun) -> None:
        """Open (or, on resume, reopen) the tracker's run and record ``run.config``."""

    @abstractmethod
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record the scalar metrics of ``step`` (numbers only, the step not among them)."""

    def log_samples(self, step: int, table: SamplesTable) -> None:
        """Record a table of sampled responses at ``step``; by default not recorded."""

    def log_summary(self, summary: Mapping[str, float]) -> None:
        """Record the final summary (``metric/last``, ``metric/best`` ...); by default not."""

    def close(self) -> None:
        """Flush and release what ``start`` opened (called once, after the summary)."""
