"""Metric names on the console are plain text: a ``[/x]`` or ``[red]`` prints as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from lightrft_core.trackers import ConsoleTracker, builtin
from lightrft_core.trainer.metrics import MetricsLogger


def test_names_with_brackets_print_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin, "CONSOLE_KEYS", ("reward/[/x]", "reward/[red]ok"))
    console = Console(record=True, width=200, color_system=None)
    logger = MetricsLogger([ConsoleTracker(console=console)])
    logger.log(1, {"reward/[/x]": 0.5, "reward/[red]ok": 0.25, "time/[/y]": 2.0})
    console.print(logger.summary_table())
    text = console.export_text()
    assert "step 1 | reward/[/x] 0.5 | reward/[red]ok 0.25" in text
    assert "time/[/y] (total s)" in text


def test_a_piped_console_gets_one_line_per_step(tmp_path: Path) -> None:
    """A console that is not a terminal is 80 columns wide; the step line must not wrap."""
    import io

    sink = io.StringIO()
    console = Console(file=sink, width=40, color_system=None)
    assert not console.is_terminal
    logger = MetricsLogger([ConsoleTracker(console=console)])
    record = {key: 0.123456 for key in builtin.CONSOLE_KEYS}
    logger.log(1, record)
    logger.log(2, record)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2 and len(lines[0]) > 40
    assert lines[1].startswith("step 2 | ") and lines[1].count("0.1235") == len(record)


def test_plot_compares_runs_on_one_figure(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lightrft_cli.main import app

    for name, slope in (("run_a", 0.1), ("run_b", 0.2)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "reward/mean": slope * s, "accuracy": slope * s} for s in range(1, 5)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "both.png"
    runner = CliRunner()
    out = runner.invoke(
        app, ["plot", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "-o", str(png)]
    )
    assert out.exit_code == 0, out.output
    assert png.is_file() and png.stat().st_size > 1000
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    out = runner.invoke(
        app, ["plot", str(tmp_path / "run_a"), str(tmp_path / "empty"), "-o", str(png)]
    )
    assert out.exit_code == 2 and "empty" in out.output
    assert "no reward or accuracy values to plot" in out.output
