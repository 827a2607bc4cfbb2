"""Where metrics go: to the run's trackers (``logging.trackers``: the console line,
``metrics.jsonl``, TensorBoard, plugins' W&B, MLflow ...), and a summary table at the end.
Only rank 0 tracks."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from ..interfaces.tracker import SamplesTable, TrackedRun, Tracker
from ..trackers.builtin import format_line

__all__ = ["MetricsLogger", "PhaseTimer", "format_line", "read_metrics"]

logger = logging.getLogger("lightrft.trainer")

#: Metrics the end-of-run summary table reports (first, last, best).
SUMMARY_KEYS = (
    "sft/loss",
    "reward/mean",
    "accuracy",
    "eval/accuracy",
    "eval/reward",
    "response_length",
    "kl",
)
#: The statistics of each summary metric, in the table's column order.
SUMMARY_STATS = ("first", "last", "best", "mean")


class PhaseTimer:
    """Accumulates wall time per phase: ``with timer("generate"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = {f"time/{k}": v for k, v in self.seconds.items()}, {}
        return out


class MetricsLogger:
    """Hands each logged step to every tracker and keeps the history (for the summary).

    Built on rank 0 with the run's trackers, on the other ranks with none. A tracker call
    that raises is reported once (one warning naming the tracker) and that tracker is left
    out from then on: the run goes on.
    """

    def __init__(self, trackers: Sequence[Tracker] = (), run: TrackedRun | None = None) -> None:
        self.trackers = list(trackers)
        self.history: list[dict[str, Any]] = []
        self._closed = False
        if run is None:
            return
        path = Path(run.output_dir) / "metrics.jsonl"
        if run.resume_step is not None and path.is_file():  # the summary spans the whole run
            self.history = [r for r in records_to_resume(path) if r["step"] <= run.resume_step]
        self._each("start", lambda tracker: tracker.start(run))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        values = {k: _plain(v) for k, v in metrics.items()}
        self.history.append({"step": step, **values})
        self._each("log_metrics", lambda tracker: tracker.log_metrics(step, values))

    def log_samples(self, step: int, table: SamplesTable) -> None:
        """Hand a table of sampled responses to every tracker (rank 0; others do nothing)."""
        self._each("log_samples", lambda tracker: tracker.log_samples(step, table))

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                self.trackers.remove(tracker)
                logger.warning(
                    "tracker %r failed in %s and is off for the rest of the run: %s: %s",
                    tracker.name,
                    what,
                    type(exc).__name__,
                    exc,
                )

    def summary(self) -> dict[str, float]:
        """``{"reward/mean/first": ..., ".../last", ".../best", ".../mean"}`` for each of
        ``SUMMARY_KEYS`` the run logged."""
        out: dict[str, float] = {}
        for key, values in self._summary_values():
            best = min(values) if key in ("kl",) else max(values)
            stats = (values[0], values[-1], best, sum(values) / len(values))
            out.update({f"{key}/{name}": v for name, v in zip(SUMMARY_STATS, stats, strict=True)})
        return out

    def _summary_values(self) -> list[tuple[str, list[float]]]:
        found = []
        for key in SUMMARY_KEYS:
            values = [r[key] for r in self.history if isinstance(r.get(key), (int, float))]
            if values:
                found.append((key, values))
        return found

    def summary_table(self, title: str = "Run summary") -> Table:
        table = Table(title=title)
        for column in ("metric", *SUMMARY_STATS):
            table.add_column(column, justify="right" if column != "metric" else "left")
        summary = self.summary()
        for key, _ in self._summary_values():
            table.add_row(Text(key), *(f"{summary[f'{key}/{s}']:.4g}" for s in SUMMARY_STATS))
        phases = sorted({k for r in self.history for k in r if k.startswith("time/")})
        for key in phases:
            total = sum(r.get(key, 0.0) for r in self.history)
            table.add_row(Text(f"{key} (total s)"), "", "", "", f"{total:.1f}")
        return table

    def close(self) -> None:
        """Give the trackers the summary, then close them (once)."""
        if self._closed:
            return
        self._closed = True
        summary = self.summary()
        self._each("log_summary", lambda tracker: tracker.log_summary(summary))
        self._each("close", lambda tracker: tracker.close())


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def records_to_resume(path: Path) -> list[dict[str, Any]]:
    """The records of a log a resumed run continues: a partial last line (a crash while it
    was written) is dropped with a warning; a bad line before it is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number < len(lines):
                raise ValueError(
                    f"{path}:{number}: not valid JSON ({exc}); fix or remove that line"
                ) from exc
            logger.warning("%s: dropped a partial last line (a crash while it was written)", path)
    return records


def rewrite_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: written beside it, then renamed over it, so a crash
    leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (a clear error when missing)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path}: is {run_dir} a LightRFT run directory?")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from exc
    return records
