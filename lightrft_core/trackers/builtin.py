"""The console line, ``metrics.jsonl`` and TensorBoard event files as trackers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from rich.console import Console

from ..interfaces.tracker import SamplesTable, TrackedRun, Tracker

#: Metrics printed on the compact per-step console line, in this order.
CONSOLE_KEYS = (
    "sft/loss",
    "reward/mean",
    "accuracy",
    "eval/accuracy",
    "kl",
    "entropy",
    "clip_fraction",
    "response_length",
    "grad_norm",
    "tokens_per_s",
    "time/step",
)


class ConsoleTracker(Tracker):
    """One compact line per logged step (every ``logging.log_every`` steps)."""

    name: ClassVar[str] = "console"

    def __init__(self, config: Any = None, *, console: Console | None = None, every: int = 1):
        super().__init__(config)
        self.console = console or Console(highlight=False)
        self.every = every

    def start(self, run: TrackedRun) -> None:
        """Nothing to open: the console is there."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if step % self.every == 0:
            # names are plain text; one line per step however narrow the console (a piped
            # console is 80 columns and would otherwise wrap inside a metric)
            line = format_line({"step": step, **metrics})
            self.console.print(line, markup=False, soft_wrap=True)


def format_line(record: Mapping[str, Any]) -> str:
    """``step 12 | reward/mean 0.41 | accuracy 0.40 | ...`` with the keys present."""
    parts = [f"step {record['step']}"]
    for key in CONSOLE_KEYS:
        value = record.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4g}")
    return " | ".join(parts)


class JsonlTracker(Tracker):
    """``<output_dir>/metrics.jsonl``: one JSON record per logged step. A resumed run drops
    the records after its checkpoint's step (rewriting the file atomically), then appends."""

    name: ClassVar[str] = "jsonl"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._file: IO[str] | None = None

    def start(self, run: TrackedRun) -> None:
        from ..trainer.metrics import records_to_resume, rewrite_atomically

        path = Path(run.output_dir) / "metrics.jsonl"
        kept: list[dict[str, Any]] = []
        if run.resume_step is not None and path.is_file():
            kept = [r for r in records_to_resume(path) if r["step"] <= run.resume_step]
        rewrite_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = path.open("a", encoding="utf-8")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"step": step, **metrics}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``<output_dir>/tensorboard``: finite numbers as scalars,
    samples tables as a markdown text per step."""

    name: ClassVar[str] = "tensorboard"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._writer: Any = None

    def start(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(run.output_dir) / "tensorboard"))

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def log_samples(self, step: int, table: SamplesTable) -> None:
        self._writer.add_text("rollouts", markdown_table(table), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def markdown_table(table: SamplesTable) -> str:
    """The rows as a markdown table (``|`` and new lines escaped inside cells)."""
    if not table:
        return "(no samples)"
    columns = list(table[0])

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in table]
    return "\n".join(lines)
