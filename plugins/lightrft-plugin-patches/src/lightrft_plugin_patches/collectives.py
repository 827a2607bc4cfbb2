"""The two collectives of Ulysses sequence parallelism, with their gradients.

* ``all_to_all(x, group, scatter_dim, gather_dim)``: ``x`` cut into ``P`` chunks along
  ``scatter_dim``, chunk ``i`` sent to rank ``i``; the chunks received are joined along
  ``gather_dim`` in rank order. Its gradient is the all-to-all the other way round.
* ``gather_sequence(x, group, dim)``: the slices of every rank joined along ``dim``. Every
  rank then computes the same loss from the whole tensor, so the gradient a rank keeps is
  its own slice of the (identical) incoming gradient -- not a sum over ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _exchange(x: torch.Tensor, group: Any, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    size = dist.get_world_size(group)
    if x.shape[scatter_dim] % size:
        raise ValueError(
            f"all_to_all: dimension {scatter_dim} of size {x.shape[scatter_dim]} does not "
            f"divide over {size} ranks"
        )
    send = torch.stack(x.chunk(size, dim=scatter_dim))  # [P, ...chunk]
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, group: Any, scatter_dim: int, gather_dim: int
    ) -> torch.Tensor:
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _exchange(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _exchange(grad, ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        size, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(size, dim=ctx.dim)[rank].contiguous(), None, None


def all_to_all(x: torch.Tensor, group: Any, *, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Scatter ``x`` along ``scatter_dim`` over ``group``, gather along ``gather_dim``."""
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


def gather_sequence(x: torch.Tensor, group: Any, *, dim: int) -> torch.Tensor:
    """Every rank's slice of ``x`` (equal sizes), joined along ``dim`` in rank order."""
    return _GatherSequence.apply(x, group, dim)
