"""Sequence parallelism in the loops. ``lightrft train``, ``lightrft sft`` and ``lightrft
rm`` take a strategy that splits sequences (``strategy.sequence_parallel_size > 1``; equal
to one rank: ``test_ulysses_distributed.py``) and refuse, with one line, what the split
forward does not take. What the loop's rows see of such a strategy (``data_ranks``): its
data-parallel rank and size, collectives over one rank per group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.trainer.distributed import (
    DataRanks,
    check_group_agrees,
    check_splittable,
    data_ranks,
)

runner = CliRunner()


def rows(path: Path, row: dict[str, str]) -> Path:
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def cli(command: str, row: dict[str, str], model: Path, tmp_path: Path) -> list[str]:
    """The ``error:`` lines of ``lightrft COMMAND`` with fsdp splitting sequences over 2."""
    result = runner.invoke(
        app,
        [
            command,
            "--plugin",
            "fsdp",
            "--plugin",
            "grpo",
            f"run.output_dir={tmp_path / 'run'}",
            f"model.path={model}",
            f"data.train_path={rows(tmp_path / 'rows.jsonl', row)}",
            "strategy.name=fsdp",
            "strategy.sequence_parallel_size=2",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("command", "row"),
    [
        ("train", {"prompt": "q", "answer": "a"}),
        ("sft", {"prompt": "q", "response": "a"}),
        ("rm", {"prompt": "q", "chosen": "a", "rejected": "b"}),
    ],
)
def test_every_loop_takes_it_but_one_process_cannot_make_groups_of_two(
    command: str, row: dict[str, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    try:
        errors = cli(command, row, tiny_model_dir, tmp_path)
    finally:  # the strategy made a one-process group before making the groups failed
        if dist.is_initialized():
            dist.destroy_process_group()
    assert errors == ["error: strategy.sequence_parallel_size=2 does not divide the 1 ranks"]


class SplittingStrategy(LocalStrategy):
    """One process that says it splits sequences over 2 ranks (data-parallel rank 0 of 1)."""

    @property
    def sequence_parallel_size(self) -> int:
        return 2

    @property
    def data_parallel_size(self) -> int:
        return 1


def test_what_train_refuses_with_split_sequences() -> None:
    check_splittable(SplittingStrategy(), shared_critic=False, media=False, engine="hf")
    check_splittable(LocalStrategy(), shared_critic=True, media=True, engine="vllm")
    with pytest.raises(ValueError) as refused:
        check_splittable(SplittingStrategy(), shared_critic=True, media=True, engine="vllm")
    assert str(refused.value) == (
        "strategy.sequence_parallel_size is 2, but sequence parallelism does not take "
        "a shared critic (a value head on the actor's trunk), media inputs, engine 'vllm' "
        "(only 'hf') yet: set strategy.sequence_parallel_size: 1"
    )


def test_a_loop_without_an_engine_is_not_refused_for_one() -> None:
    # lightrft sft passes no engine: only what its rows carry can be refused
    check_splittable(SplittingStrategy(), shared_critic=False, media=False)
    with pytest.raises(ValueError) as refused:
        check_splittable(SplittingStrategy(), shared_critic=False, media=True)
    assert str(refused.value) == (
        "strategy.sequence_parallel_size is 2, but sequence parallelism does not take "
        "media inputs yet: set strategy.sequence_parallel_size: 1"
    )


def test_rows_see_one_rank_per_group() -> None:
    whole = LocalStrategy()
    assert data_ranks(whole) is whole
    split = SplittingStrategy()
    view = data_ranks(split)
    assert isinstance(view, DataRanks)
    assert (view.rank, view.world_size, view.is_rank_0) == (0, 1, True)
    assert view.all_reduce(torch.tensor([3.0, 4.0]), op="sum").tolist() == [3.0, 4.0]
    assert view.all_gather(torch.tensor([5])).tolist() == [5]
    check_group_agrees(split, {"tokens": torch.tensor([[1, 2]]), "rewards": torch.ones(1)})


def test_a_strategy_holds_whole_sequences_by_default() -> None:
    strategy = LocalStrategy()
    assert strategy.sequence_parallel_size == 1
    assert strategy.sequence_parallel_group is None and strategy.data_parallel_group is None
    assert (strategy.data_parallel_rank, strategy.data_parallel_size) == (0, 1)
