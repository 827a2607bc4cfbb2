"""``lightrft_core.distributed``: devices, the group of one, the collectives on one rank and
on two (two processes over gloo), and the checkpoint folder every rank writes into."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from lightrft_core import distributed

WORKER = Path(__file__).with_name("collectives_worker.py")


# ---------------------------------------------------------------------- one process
def test_one_rank_reduce_copies_and_checks_the_op() -> None:
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    for op in ("mean", "sum", "max", "min"):
        result = distributed.one_rank_reduce(value, op)  # type: ignore[arg-type]
        assert result.tolist() == [1.0, 2.0]
        assert not result.requires_grad and result.data_ptr() != value.data_ptr()
    mean = distributed.one_rank_reduce(3, "mean")
    assert mean.is_floating_point() and float(mean) == 3.0
    assert distributed.one_rank_reduce(3, "max").dtype == torch.int64
    with pytest.raises(ValueError, match="unknown reduce op 'prod'; choose one of mean, sum"):
        distributed.one_rank_reduce(1.0, "prod")  # type: ignore[arg-type]


def test_one_rank_gather_gives_rows() -> None:
    scalar = torch.tensor(4.0)
    gathered = distributed.one_rank_gather(scalar)
    assert gathered.shape == (1,) and gathered.tolist() == [4.0]
    gathered[0] = 0.0
    assert float(scalar) == 4.0, "the result is a copy"
    assert distributed.one_rank_gather(torch.ones(2, 3)).shape == (2, 3)


def test_devices_and_backends() -> None:
    assert distributed.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        distributed.pick_device("tpu")
    if not torch.cuda.is_available():
        assert distributed.pick_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no usable CUDA device"):
            distributed.pick_device("cuda")
    cpu = torch.device("cpu")
    assert distributed.backend_for("auto", cpu) == "gloo"
    assert distributed.backend_for("auto", torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for("gloo", cpu) == "gloo"
    with pytest.raises(ValueError, match="nccl' needs CUDA"):
        distributed.backend_for("nccl", cpu)


@pytest.fixture
def group_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process group of one made by ``init_process_group`` (no torchrun variables), gone
    after the test."""
    assert not dist.is_initialized(), "another test left a process group behind"
    monkeypatch.delenv("RANK", raising=False)
    distributed.init_process_group("gloo", timeout_s=30)
    yield
    dist.destroy_process_group()


def test_without_torchrun_the_group_has_one_rank(group_of_one: None, tmp_path: Path) -> None:
    distributed.init_process_group("gloo", timeout_s=30)  # a group exists: nothing to do
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.all_reduce(torch.tensor([2, 5]), "mean").tolist() == [2.0, 5.0]
    assert distributed.all_gather(torch.tensor(7)).tolist() == [7]
    distributed.barrier()
    with distributed.atomic_directory_of_all_ranks(tmp_path / "ckpt") as tmp:
        (tmp / "a.txt").write_text("saved")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "saved"


LEAVES_AT_EXIT = """
import atexit
import torch
import torch.distributed as dist
from lightrft_core import distributed

# registered first, so it runs after the handler init_process_group registers
atexit.register(lambda: print("group alive at exit:", dist.is_initialized()))
distributed.init_process_group("gloo", timeout_s=30)
distributed.init_process_group("gloo", timeout_s=30)  # a group exists: nothing to do
work = dist.all_reduce(torch.ones(3), async_op=True)  # never waited on
print("group alive in main:", dist.is_initialized())
"""


def test_the_group_it_made_is_left_before_the_interpreter_shuts_down() -> None:
    # A gloo group freed by the interpreter's shutdown can abort the process (SIGABRT)
    # after a run finished; init_process_group leaves its group at exit, once.
    proc = subprocess.run(
        [sys.executable, "-c", LEAVES_AT_EXIT],
        capture_output=True,
        text=True,
        timeout=120,
        env={name: value for name, value in os.environ.items() if name != "RANK"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["group alive in main: True", "group alive at exit: False"]


def test_leaving_without_a_group_does_nothing() -> None:
    assert not dist.is_initialized()
    distributed.leave_process_group()
    assert not dist.is_initialized()


def test_without_a_group_rank_and_world_size_are_0_and_1() -> None:
    assert not dist.is_initialized()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.all_reduce(1.5, "sum").item() == 1.5
    distributed.barrier()  # nothing to wait for


# ---------------------------------------------------------------------- two processes
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each collective returned on rank 0 and on rank 1 (two processes, gloo)."""
    out = tmp_path_factory.mktemp("two_ranks")
    init_file = out / "init"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(init_file), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


@pytest.mark.slow
def test_all_reduce_ops_over_two_ranks(two_ranks: list[dict[str, Any]]) -> None:
    # rank 0 holds [1, 4], rank 1 holds [3, 2]
    for results in two_ranks:
        assert results["mean"] == [2.0, 3.0]
        assert results["sum"] == [4.0, 6.0]
        assert results["max"] == [3.0, 4.0]
        assert results["min"] == [1.0, 2.0]
        assert results["int_mean"] == (1.5, True)  # (1 + 2) / 2, as a float
        assert results["number_sum"] == 2.0  # 0.5 + 1.5
        assert results["rank"][1] == 2
    assert [results["rank"][0] for results in two_ranks] == [0, 1]


@pytest.mark.slow
def test_all_gather_of_ragged_rows_in_rank_order(two_ranks: list[dict[str, Any]]) -> None:
    for results in two_ranks:
        assert results["ragged"] == ([[0, 1], [2, 3], [4, 5]], True)
        assert results["scalars"] == [0.0, 1.0]


@pytest.mark.slow
def test_a_rank_that_fails_to_save_keeps_the_previous_checkpoint(
    two_ranks: list[dict[str, Any]],
) -> None:
    assert [r["failed_save_raised"] for r in two_ranks] == ["RuntimeError", "OSError"]
    for results in two_ranks:
        assert results["contents"] == {"part0.txt": "first", "part1.txt": "first"}
        assert results["siblings"] == ["checkpoint"], "no temporary folder may be left"
