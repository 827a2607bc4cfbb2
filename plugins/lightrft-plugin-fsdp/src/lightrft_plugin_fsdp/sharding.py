"""Applying FSDP2 to a model: which modules become shard units, meta-device models, and
keeping an optimizer created before sharding bound to the sharded parameters.

Layout: every decoder layer is its own ``fully_shard`` unit (all-gathered just before its
forward, freed after), and the prepared module itself is the root unit; the root holds what
is left (embeddings, final norm, output head -- tied weights stay in one unit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.distributed.fsdp import FSDPModule, fully_shard

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _transformers_models(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The Hugging Face models inside ``model`` (they name their decoder layer classes)."""
    for module in model.modules():
        if getattr(module, "_no_split_modules", None):
            yield module


def layer_class_names(model: torch.nn.Module, configured: list[str] | None) -> set[str]:
    """Class names of the modules to shard one by one: ``configured``, else the decoder
    layers the transformers model lists in ``_no_split_modules``."""
    if configured:
        return set(configured)
    names: set[str] = set()
    for module in _transformers_models(model):
        names.update(cast("PreTrainedModel", module)._no_split_modules or ())
    return names


def shard_units(model: torch.nn.Module, class_names: set[str]) -> list[torch.nn.Module]:
    """The outermost modules of ``model`` whose class name is in ``class_names`` (a layer
    nested in another unit is not a unit of its own), in module order."""
    units: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or module is model:
            continue
        if type(module).__name__ in class_names:
            units.append(module)
            inside.update(id(m) for m in module.modules())
    return units


def apply_fsdp(
    model: torch.nn.Module,
    *,
    mesh: Any,
    units: list[torch.nn.Module],
    mp_policy: Any,
    offload_policy: Any,
    reshard_after_forward: bool,
    root_reshard_after_forward: bool,
) -> dict[FSDPModule, bool]:
    """``fully_shard`` every unit, then the root; returns each FSDP module's
    ``reshard_after_forward`` (to restore it after ``unsharded_for_inference``)."""
    options = {"mesh": mesh, "mp_policy": mp_policy, "offload_policy": offload_policy}
    reshard: dict[FSDPModule, bool] = {}
    for unit in units:
        fully_shard(unit, reshard_after_forward=reshard_after_forward, **options)
        reshard[unit] = reshard_after_forward  # type: ignore[index]
    fully_shard(model, reshard_after_forward=root_reshard_after_forward, **options)
    reshard[model] = root_reshard_after_forward  # type: ignore[index]
    return reshard


def initialize_root(model: torch.nn.Module) -> None:
    """Make ``model`` the root of its FSDP tree now, not at its first forward.

    FSDP2 takes the first unit that runs forward as the root. The ``hf`` engine calls the
    transformers model inside the actor directly (generation comes before the first actor
    forward), so without this a decoder layer would become the root and the actor's first
    forward would fail. ``_lazy_init`` is private but stable across FSDP2 releases.
    """
    model._get_fsdp_state()._lazy_init()  # type: ignore[operator]


def fsdp_modules(model: torch.nn.Module) -> list[FSDPModule]:
    """Every FSDP unit inside ``model`` (root included), in module order."""
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: torch.nn.Module, reshard: dict[FSDPModule, bool]) -> Iterator[None]:
    """Every unit of ``model`` all-gathered once, kept so while the body runs (no
    collective inside, so ranks may run different numbers of forward passes), then freed."""
    units = fsdp_modules(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard.get(unit, True), recurse=False)


@contextlib.contextmanager
def gradient_sync_off(model: torch.nn.Module) -> Iterator[None]:
    """Backward passes inside accumulate unsharded gradients locally: no reduce-scatter,
    and parameters stay gathered for the next micro-batch (no re-all-gather)."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


# ---------------------------------------------------------------------- optimizer binding
def parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """For each param group of ``optimizer``, the names (in ``model``) of its parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in names]
    if missing:
        raise ValueError(
            f"the optimizer holds {len(missing)} parameter(s) that are not in the model "
            "being prepared; create it with strategy.create_optimizer(model, ...)"
        )
    if any(optimizer.state.values()):
        raise ValueError(
            "prepare() needs an optimizer that has not stepped yet (its state would be lost "
            "when FSDP replaces the parameters); prepare first, then load a checkpoint"
        )
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def rebind_optimizer(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, names: list[list[str]]
) -> None:
    """Point ``optimizer``'s param groups at the sharded parameters that replaced the ones
    it was created with (same names). In place, so a scheduler built on it stays valid."""
    params = dict(model.named_parameters())
    for group, group_names in zip(optimizer.param_groups, names, strict=True):
        group["params"] = [params[name] for name in group_names]
    optimizer.state.clear()


# ---------------------------------------------------------------------- meta device
@contextlib.contextmanager
def transformers_on_meta() -> Iterator[None]:
    """Models built inside get their structure only, on the meta device: transformers'
    ``from_pretrained`` builds from the folder's config and reads no weights (the strategy
    broadcasts rank 0's weights in ``prepare``). Only the ranks > 0 enter it."""
    from transformers import AutoConfig, PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]

    def structure_only(cls: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(
            path, trust_remote_code=kwargs.get("trust_remote_code", False)
        )
        options = {k: kwargs[k] for k in ("dtype", "attn_implementation") if k in kwargs}
        return cls._from_config(config, **options).eval()

    PreTrainedModel.from_pretrained = classmethod(structure_only)  # type: ignore[assignment]
    try:
        with torch.device("meta"):
            yield
    finally:
        PreTrainedModel.from_pretrained = original  # type: ignore[method-assign]


def full_state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rank 0's complete weights, taken before sharding (buffers are broadcast later)."""
    return dict(model.state_dict())


def materialize_from_rank_0(
    model: torch.nn.Module,
    full_state: dict[str, torch.Tensor] | None,
    *,
    device: torch.device,
    cpu_offload: bool,
) -> None:
    """Give the (sharded) meta-device ``model`` of ranks > 0 storage and load rank 0's
    ``full_state`` into every rank: parameters by a broadcast into their shards, buffers
    (non-persistent ones included, e.g. rotary frequencies) by a plain broadcast."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        ValueType,
        set_model_state_dict,
    )

    rank = dist.get_rank()
    if rank != 0:
        model.to_empty(device="cpu" if cpu_offload else device)
        for module in model.modules():  # buffers live on the compute device either way
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.device != device:
                    module._buffers[name] = buffer.to(device)
    weights: dict[str, ValueType] = {}
    if rank == 0:
        keys = model.state_dict().keys()
        weights = {k: v for k, v in (full_state or {}).items() if k in keys}
    set_model_state_dict(
        model,
        weights,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    for _, buffer in model.named_buffers():
        dist.broadcast(buffer.data, src=0)
