"""What every strategy built on ``torch.distributed`` needs, as free functions: the device
of this rank, the process group (``torchrun``'s, or a group of one), the collectives of
``StrategyBase`` (``all_reduce`` with its ops, ``all_gather`` of ragged lengths) and a
checkpoint folder that every rank writes into and that is swapped in atomically.

Without a process group the collectives are those of one rank (a copy), and ``rank()`` and
``world_size()`` are 0 and 1: the built-in ``local`` strategy uses the same functions.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import torch
import torch.distributed as dist

from .checkpoint import atomic_directory
from .interfaces.strategy import ReduceOp

#: The ops of ``all_reduce``; ``mean`` is the sum divided by the number of ranks.
REDUCE_OPS: tuple[str, ...] = get_args(ReduceOp)
#: ``strategy.timeout_s`` unless a strategy's options say otherwise: a collective waits this
#: many seconds for the other ranks before it fails (a dead rank ends the job, no hang).
DEFAULT_TIMEOUT_S = 1800.0

_TORCH_OPS = {"mean": "SUM", "sum": "SUM", "max": "MAX", "min": "MIN"}


# ---------------------------------------------------------------------- devices and groups
def pick_device(wanted: str) -> torch.device:
    """This rank's device for ``strategy.device`` (``auto``, ``cpu`` or ``cuda``): CUDA
    device ``LOCAL_RANK`` (0 without torchrun), made the current one, or the CPU."""
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {wanted!r}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "strategy.device: 'cuda' but this machine has no usable CUDA device; set "
            "strategy.device=auto (or cpu) to train on the CPU"
        )
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def backend_for(backend: str, device: torch.device) -> str:
    """The collective backend for ``strategy.backend``: ``auto`` is nccl on CUDA, else gloo."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("backend 'nccl' needs CUDA devices; use backend 'gloo' on the CPU")
    return backend


def init_process_group(backend: str, *, timeout_s: float) -> None:
    """Join the process group of the ``torchrun`` job (``RANK`` is in the environment), or
    make a group of one in this process (a plain ``python ...`` run). Nothing to do when a
    group exists (whoever made it leaves it). Collectives that wait longer than
    ``timeout_s`` seconds fail. The group made here is left when the process exits
    (``leave_process_group``, run by ``atexit``)."""
    if dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s)
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
    else:
        store = dist.HashStore()
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    atexit.unregister(leave_process_group)  # once, however many groups this process made
    atexit.register(leave_process_group)


def leave_process_group() -> None:
    """Destroy the process group, if there is one, while the interpreter is still whole.

    A group left for the interpreter's shutdown to free can take the process down: gloo's
    worker threads may still hold tensors of finished collectives, whose release at that
    point aborts the process (``terminate called without an active exception``, SIGABRT;
    torchrun then reports the whole job failed after it finished), and NCCL warns that the
    group was never destroyed. Leaving is local to this rank, no collective, so a rank that
    stops on an error does not wait here for the others."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size(group: Any = None) -> int:
    """The number of ranks in ``group`` (``None``: every rank; 1 without a process group)."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a group)."""
    if dist.is_initialized():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device for nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------- collectives
def one_rank_reduce(value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor:
    """``all_reduce`` over one rank: a detached copy of ``value`` (floating point for
    ``mean``). Rejects an unknown ``op``."""
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduce op {op!r}; choose one of {', '.join(REDUCE_OPS)}")
    result = torch.as_tensor(value).detach().clone()
    if op == "mean" and not result.is_floating_point():
        result = result.to(torch.get_default_dtype())
    return result


def one_rank_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``all_gather`` over one rank: a detached copy (a 0-d tensor becomes shape ``[1]``)."""
    return tensor.detach().reshape(-1).clone() if tensor.ndim == 0 else tensor.detach().clone()


def all_reduce(
    value: torch.Tensor | float, op: ReduceOp = "mean", *, group: Any = None
) -> torch.Tensor:
    """Reduce ``value`` over the ranks of ``group`` (``None``: every rank) with ``op``; a
    new tensor on ``value``'s device (a Python number: on the CPU). Collective."""
    result = one_rank_reduce(value, op)
    if world_size(group) == 1:
        return result
    moved = result.to(_comm_device())
    dist.all_reduce(moved, op=getattr(dist.ReduceOp, _TORCH_OPS[op]), group=group)
    if op == "mean":
        moved /= world_size(group)
    return moved.to(result.device)


def all_gather(tensor: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """Every rank's ``tensor`` (the ranks of ``group``; ``None``: every rank) concatenated
    along dim 0 in rank order; ranks may hold different lengths in dim 0 (the other dims
    must agree). Collective."""
    local = one_rank_gather(tensor)
    size = world_size(group)
    if size == 1:
        return local
    device = _comm_device()
    length = torch.tensor([local.shape[0]], device=device)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length, group=group)
    longest = max(int(n) for n in lengths)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded, group=group)
    gathered = torch.cat([part[: int(n)] for part, n in zip(parts, lengths, strict=True)])
    return gathered.to(tensor.device)


# ---------------------------------------------------------------------- checkpoint folders
@contextlib.contextmanager
def atomic_directory_of_all_ranks(path: str | Path) -> Iterator[Path]:
    """``checkpoint.atomic_directory`` for a folder that every rank writes into. Rank 0
    creates the temporary folder and tells the others its name; after the body the ranks
    vote: if every rank's body finished, rank 0 swaps the folder in; else every rank raises
    (the failing one its own error) and the folder is removed, so the previous checkpoint
    at ``path`` stays. The folder must be on a file system every rank sees. Collective."""
    with contextlib.ExitStack() as stack:
        names: list[str | None] = [None]
        if rank() == 0:
            names[0] = str(stack.enter_context(atomic_directory(path)))
        if world_size() > 1:
            dist.broadcast_object_list(names, src=0)
        error: Exception | None = None
        try:
            yield Path(str(names[0]))
        except Exception as err:  # every rank must still take part in the vote below
            error = err
        failures = torch.tensor([float(error is not None)])
        if world_size() > 1:  # the vote is also the barrier: nobody writes any more
            failures = failures.to(_comm_device())
            dist.all_reduce(failures)
        if error is not None:
            raise error
        if failures.item() > 0:
            raise RuntimeError(
                f"checkpoint {path} was not saved: another rank failed to write its part "
                "(see that rank's error); the previous checkpoint is unchanged"
            )
    barrier()  # nobody reads path before rank 0 has swapped it in
