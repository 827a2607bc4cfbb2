"""Metric names on the console are plain text: a ``[/x]`` or ``[red]`` prints as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from lightrft_core.trainer import metrics
from lightrft_core.trainer.metrics import MetricsLogger


def test_names_with_brackets_print_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "CONSOLE_KEYS", ("reward/[/x]", "reward/[red]ok"))
    console = Console(record=True, width=200, color_system=None)
    logger = MetricsLogger(tmp_path, jsonl=False, tensorboard=False, console=console)
    logger.log(1, {"reward/[/x]": 0.5, "reward/[red]ok": 0.25, "time/[/y]": 2.0})
    console.print(logger.summary_table())
    text = console.export_text()
    assert "step 1 | reward/[/x] 0.5 | reward/[red]ok 0.25" in text
    assert "time/[/y] (total s)" in text
