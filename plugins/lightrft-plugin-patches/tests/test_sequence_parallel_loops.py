"""A loop that does not split sequences refuses a strategy that does
(``strategy.sequence_parallel_size > 1``) with one line, before any process group or model
exists: it would otherwise train plain data parallelism with the groups unused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.strategies.local import LocalStrategy

runner = CliRunner()


def rows(path: Path, row: dict[str, str]) -> Path:
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("command", "row"),
    [
        ("train", {"prompt": "q", "answer": "a"}),
        ("sft", {"prompt": "q", "response": "a"}),
        ("rm", {"prompt": "q", "chosen": "a", "rejected": "b"}),
    ],
)
def test_every_loop_refuses_sequence_parallelism(
    command: str, row: dict[str, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            command,
            "--plugin",
            "fsdp",
            "--plugin",
            "grpo",
            f"run.output_dir={tmp_path / 'run'}",
            f"model.path={tiny_model_dir}",
            f"data.train_path={rows(tmp_path / 'rows.jsonl', row)}",
            "strategy.name=fsdp",
            "strategy.sequence_parallel_size=2",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: strategy.sequence_parallel_size is 2, but "
        f"lightrft {command} does not split sequences over ranks (no training loop does yet; "
        "only the actor-level forward of lightrft-plugin-patches, docs/training.md): set "
        "strategy.sequence_parallel_size: 1"
    ]


def test_a_strategy_holds_whole_sequences_by_default() -> None:
    assert LocalStrategy().sequence_parallel_size == 1
