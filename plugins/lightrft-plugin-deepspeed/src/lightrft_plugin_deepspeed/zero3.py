"""ZeRO-3 helpers: whole parameters when something other than a training step needs them.

Under ZeRO-3 every rank holds a slice of each parameter; DeepSpeed's hooks gather a
module's parameters before its forward and free them after. That is right for training
but wrong for generation, which runs the model once per new token, and a different number
of times on each rank (each gather is a collective): ``held_gathered`` gathers every
parameter once and takes the hooks off until it exits.
``full_state_dict`` collects whole tensors on rank 0 one module at a time, so no rank ever
holds more than one module's parameters in addition to its shard (rank 0 keeps the CPU
copies it writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def is_partitioned(param: torch.nn.Parameter) -> bool:
    """Whether ``param`` is a ZeRO-3 partitioned parameter."""
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


def partitioned_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if is_partitioned(p)]


@contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Whole ``params`` on every rank for the duration (read-only: changes are dropped).
    Collective: every rank must enter it. A no-op when none is partitioned."""
    if not params:
        yield
        return
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters

    with GatheredParameters(params, modifier_rank=None):
        yield


@contextmanager
def held_gathered(engine: Any) -> Iterator[None]:
    """Gather every parameter of the ZeRO-3 ``engine``'s module once and run forward passes
    of its submodules without DeepSpeed's hooks (generation): nothing gathers, frees or
    records the module order, so no collective runs inside and ranks may run different
    numbers of forward passes. Collective on entry and exit."""
    from deepspeed.runtime.zero import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield


def full_state_dict(module: torch.nn.Module, *, rank: int) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors, as CPU copies on rank 0 (an empty dict on
    the other ranks). Collective: every rank must call it."""
    state: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        own = list(sub.named_parameters(recurse=False))
        with gathered([p for _, p in own if is_partitioned(p)]):
            if rank == 0:
                for name, tensor in [*own, *sub.named_buffers(recurse=False)]:
                    key = f"{prefix}.{name}" if prefix else name
                    state[key] = tensor.detach().to("cpu", copy=True)
    if rank == 0:  # keys and order as state_dict() (which also drops non-persistent buffers)
        wanted = module.state_dict(keep_vars=True).keys()
        state = {key: state[key] for key in wanted if key in state}
    return state


def named_gathered_weights(module: Any, source: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``source()``'s named tensors (e.g. an actor's ``named_weights_for_sync``) while the
    parameters of ``module`` are gathered; each tensor is valid until the next one."""
    with gathered(partitioned_parameters(module)):
        yield from source()
