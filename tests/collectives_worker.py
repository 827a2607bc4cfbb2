"""One rank of the 2-rank check of ``lightrft_core.distributed`` (``test_collectives.py``
starts two of these): ``python collectives_worker.py RANK INIT_FILE OUT_DIR``. Rank ``r``
writes what each collective returned to ``OUT_DIR/rank<r>.pt``."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightrft_core import distributed


def collectives(rank: int) -> dict[str, Any]:
    mine = torch.tensor([1.0, 4.0]) if rank == 0 else torch.tensor([3.0, 2.0])
    results: dict[str, Any] = {
        op: distributed.all_reduce(mine, op).tolist() for op in distributed.REDUCE_OPS
    }
    int_mean = distributed.all_reduce(torch.tensor(rank + 1), "mean")
    results["int_mean"] = (int_mean.item(), int_mean.is_floating_point())
    results["number_sum"] = distributed.all_reduce(0.5 + rank, "sum").item()
    rows = torch.tensor([[0, 1]]) if rank == 0 else torch.tensor([[2, 3], [4, 5]])
    ragged = distributed.all_gather(rows)
    results["ragged"] = (ragged.tolist(), ragged.dtype == rows.dtype)
    results["scalars"] = distributed.all_gather(torch.tensor(float(rank))).tolist()
    results["rank"] = (distributed.rank(), distributed.world_size())
    return results


def checkpoint_folders(rank: int, out: Path) -> dict[str, Any]:
    """A save that succeeds, then one that fails on rank 1 after both ranks wrote."""
    path = out / "checkpoint"
    with distributed.atomic_directory_of_all_ranks(path) as tmp:
        (tmp / f"part{rank}.txt").write_text("first")
    raised = "nothing"
    try:
        with distributed.atomic_directory_of_all_ranks(path) as tmp:
            (tmp / f"part{rank}.txt").write_text("second")
            if rank == 1:
                raise OSError("disk full (injected on rank 1)")
    except (OSError, RuntimeError) as err:
        raised = type(err).__name__
    distributed.barrier()
    return {
        "failed_save_raised": raised,
        "contents": {p.name: p.read_text() for p in sorted(path.iterdir())},
        "siblings": sorted(p.name for p in out.iterdir() if "checkpoint" in p.name),
    }


def main() -> None:
    rank, init_file, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        results = collectives(rank) | checkpoint_folders(rank, out)
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
