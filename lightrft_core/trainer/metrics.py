"""Where metrics go: the console (progress bar and a compact line), ``metrics.jsonl``,
TensorBoard event files, and a summary table at the end. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

logger = logging.getLogger("lightrft.trainer")

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
    """Writes one record per step to every enabled sink."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool = True,
        jsonl: bool = True,
        tensorboard: bool = True,
        console: Console | None = None,
        log_every: int = 1,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console or Console(highlight=False)
        self.log_every = log_every
        self.history: list[dict[str, Any]] = []
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if jsonl:
            path = out / "metrics.jsonl"
            if resume_step is not None and path.is_file():  # drop steps after the checkpoint
                self.history = [r for r in records_to_resume(path) if r["step"] <= resume_step]
            rewrite_atomically(path, "".join(json.dumps(r) + "\n" for r in self.history))
            self._jsonl = path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(record)
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if step % self.log_every == 0:
            # names are plain text; one line per step however narrow the console (a piped
            # console is 80 columns and would otherwise wrap inside a metric)
            self.console.print(format_line(record), markup=False, soft_wrap=True)

    def summary_table(self, title: str = "Run summary") -> Table:
        table = Table(title=title)
        for column in ("metric", "first", "last", "best", "mean"):
            table.add_column(column, justify="right" if column != "metric" else "left")
        for key in SUMMARY_KEYS:
            values = [r[key] for r in self.history if isinstance(r.get(key), (int, float))]
            if not values:
                continue
            best = min(values) if key in ("kl",) else max(values)
            mean = sum(values) / len(values)
            table.add_row(Text(key), *(f"{v:.4g}" for v in (values[0], values[-1], best, mean)))
        phases = sorted({k for r in self.history for k in r if k.startswith("time/")})
        for key in phases:
            total = sum(r.get(key, 0.0) for r in self.history)
            table.add_row(Text(f"{key} (total s)"), "", "", "", f"{total:.1f}")
        return table

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def format_line(record: Mapping[str, Any]) -> str:
    """``step 12 | reward/mean 0.41 | accuracy 0.40 | ...`` with the keys present."""
    parts = [f"step {record['step']}"]
    for key in CONSOLE_KEYS:
        value = record.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4g}")
    return " | ".join(parts)


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
