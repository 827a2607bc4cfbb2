"""``FSDPStrategy``: data-parallel training with PyTorch FSDP2 (``fully_shard``).

One process per device, launched by ``torchrun`` (without it: one process, world size 1).
Parameters, gradients and optimizer states are sharded over all ranks; each decoder layer
is all-gathered just before its forward and freed after (see ``sharding.py``). Gradients
are averaged over ranks by reduce-scatter, matching ``LossScale.world_size``.

Beyond ``StrategyBase`` it offers three contexts the training loop uses when a strategy
has them (see ``docs/distributed.md``):

* ``model_init_context()``: models built inside are skeletons on the meta device on ranks
  > 0 (with ``meta_init``); ``prepare`` fills them from rank 0;
* ``no_sync(model)``: backward passes inside accumulate gradients without communication;
* ``generation_context(model)``: the whole model gathered on every rank, for generation
  with the training module (the ``hf`` engine) -- no collective runs inside.

With ``sequence_parallel_size`` P > 1 it also makes groups of P consecutive ranks that split
each sequence (Ulysses, ``lightrft-plugin-patches``): ``sequence_parallel_group``, the
share of the rows a group takes, ``data_parallel_rank`` of ``data_parallel_size``, and the
``data_parallel_group`` of the ranks at the same place in every group; ``prepare`` makes a
``language`` actor's forward split its sequences over the group, and so the forward of a
critic or a sequence classifier it trains (``lightrft rm``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lightrft_core import distributed
from lightrft_core.interfaces import Actor, StrategyBase
from lightrft_core.interfaces.strategy import ReduceOp
from lightrft_core.models.critic import CriticModel

from . import checkpointing, sharding

logger = logging.getLogger("lightrft.fsdp")


def sequence_parallel_groups(size: int) -> tuple[Any, Any]:
    """This rank's group of ``size`` consecutive ranks, and its data-parallel group: the
    ranks at the same place in every such group (every rank creates every group)."""
    import torch.distributed as dist

    world, rank = distributed.world_size(), distributed.rank()
    if world % size:
        raise ValueError(
            f"strategy.sequence_parallel_size={size} does not divide the {world} ranks"
        )
    splits = [dist.new_group(list(range(start, start + size))) for start in range(0, world, size)]
    shares = [dist.new_group(list(range(place, world, size))) for place in range(size)]
    return splits[rank // size], shares[rank % size]


def require_patches() -> None:
    """Stop, with what to install, where splitting sequences needs lightrft-plugin-patches
    and it is missing."""
    if importlib.util.find_spec("lightrft_plugin_patches") is None:
        raise ImportError(
            "strategy.sequence_parallel_size > 1 needs lightrft-plugin-patches "
            "(pip install lightrft-plugin-patches)"
        )


def split_sequences(actor: torch.nn.Module, group: Any) -> None:
    """Make ``actor``'s forward split every sequence over ``group``
    (``lightrft_plugin_patches.sequence_parallel``); only a ``language`` actor can."""
    from lightrft_core.actors.language import ActorLanguage

    if not isinstance(actor, ActorLanguage):
        raise ValueError(
            f"strategy.sequence_parallel_size > 1 splits the sequences of the language actor "
            f"only, not of {type(actor).__name__}"
        )
    require_patches()
    from lightrft_plugin_patches.sequence_parallel import enable_sequence_parallel

    enable_sequence_parallel(actor, group)


def is_sequence_classifier(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a transformers sequence classifier (``lightrft rm``'s model); ask
    before sharding it (``fully_shard`` renames its class)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    return type(model).__name__ in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()


def split_values(critic: CriticModel, group: Any) -> None:
    """Make a trained critic's forward split every row over ``group``
    (``lightrft_plugin_patches.split_values``)."""
    require_patches()
    from lightrft_plugin_patches.split_values import enable_split_values

    enable_split_values(critic, group)


def split_scores(classifier: torch.nn.Module, group: Any) -> None:
    """Make a trained sequence classifier's forward split every row over ``group``
    (``lightrft_plugin_patches.split_scores``)."""
    require_patches()
    from lightrft_plugin_patches.split_scores import enable_split_scores

    enable_split_scores(classifier, group)


class FSDPStrategy(StrategyBase):
    """Shards the policy (and the reference model) over every rank with FSDP2."""

    name = "fsdp"

    @dataclass
    class Config:
        # ------------------------------------------------------------ numerics
        precision: Literal["fp32", "bf16"] = field(
            default="fp32",
            metadata={
                "help": "fp32, or bf16 mixed precision: bf16 parameters in forward/backward, "
                "fp32 gradient reduction, fp32 sharded weights and optimizer states."
            },
        )
        # ------------------------------------------------------------ sharding
        reshard_after_forward: bool = field(
            default=True,
            metadata={
                "help": "Free each layer's gathered parameters after its forward and gather "
                "them again in backward (least memory); false keeps them until backward."
            },
        )
        shard_modules: list[str] | None = field(
            default=None,
            metadata={
                "help": "Class names of the modules sharded one by one; null: the decoder "
                "layers the transformers model names in _no_split_modules."
            },
        )
        cpu_offload: bool = field(
            default=False,
            metadata={
                "help": "Keep sharded parameters, gradients and optimizer states in CPU "
                "memory (the optimizer steps on the CPU); a no-op on CPU-only machines."
            },
        )
        offload_reference: bool = field(
            default=False,
            metadata={
                "help": "Keep the shards of models prepared without an optimizer (the "
                "reference model) in CPU memory; gathered only for their forward passes."
            },
        )
        meta_init: bool = field(
            default=False,
            metadata={
                "help": "Only rank 0 reads the weights; the other ranks build the model on "
                "the meta device and receive rank 0's weights by broadcast (large models)."
            },
        )
        # ------------------------------------------------------------ sequence parallelism
        sequence_parallel_size: int = field(
            default=1,
            metadata={
                "help": "Ranks that split each sequence between them (Ulysses; needs "
                "lightrft-plugin-patches); must divide the world size. Parameters stay "
                "sharded over every rank; world_size / sequence_parallel_size groups of "
                "consecutive ranks each take their own rows."
            },
        )
        # ------------------------------------------------------------ process group
        backend: Literal["auto", "gloo", "nccl"] = field(
            default="auto",
            metadata={"help": "Collective backend; auto: nccl on CUDA, gloo on CPU."},
        )
        device: Literal["auto", "cpu", "cuda"] = field(
            default="auto",
            metadata={"help": "auto: cuda:<LOCAL_RANK> when CUDA is available, else cpu."},
        )
        timeout_s: float = field(
            default=distributed.DEFAULT_TIMEOUT_S,
            metadata={
                "help": "Seconds a collective may wait for the other ranks before failing "
                "(a dead or stuck rank makes the others exit instead of hanging)."
            },
        )

        def __post_init__(self) -> None:
            if self.precision not in ("fp32", "bf16"):
                raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
            if self.backend not in ("auto", "gloo", "nccl"):
                raise ValueError(f"backend must be auto, gloo or nccl, got {self.backend!r}")
            if self.backend == "nccl" and self.device == "cpu":
                raise ValueError("backend 'nccl' needs CUDA devices; use backend 'gloo' on cpu")
            if self.device not in ("auto", "cpu", "cuda"):
                raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
            if not self.timeout_s > 0:
                raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
            if self.sequence_parallel_size < 1:
                raise ValueError(
                    f"sequence_parallel_size must be >= 1, got {self.sequence_parallel_size}"
                )
            if self.shard_modules is not None and not all(self.shard_modules):
                raise ValueError("shard_modules must be null or a list of class names")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._device: torch.device | None = None
        self._mesh: Any = None
        self._sequence_parallel_group: Any = None
        self._data_parallel_group: Any = None
        self._reshard: dict[Any, bool] = {}  # FSDP unit -> its reshard_after_forward
        self._roots: list[torch.nn.Module] = []

    # ------------------------------------------------------------------ process group
    def setup_distributed(self) -> None:
        """Join the ``torchrun`` process group (or make a one-process group), pick the
        device and build the device mesh. (The run seeds every RNG with ``run.seed``.)"""
        from torch.distributed.device_mesh import init_device_mesh

        self._device = distributed.pick_device(self.config.device)
        backend = distributed.backend_for(self.config.backend, self._device)
        distributed.init_process_group(backend, timeout_s=self.config.timeout_s)
        self._mesh = init_device_mesh(self._device.type, (distributed.world_size(),))
        if self.config.sequence_parallel_size > 1:
            self._sequence_parallel_group, self._data_parallel_group = sequence_parallel_groups(
                self.config.sequence_parallel_size
            )

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    @property
    def sequence_parallel_size(self) -> int:
        return self.config.sequence_parallel_size

    @property
    def sequence_parallel_group(self) -> Any:
        """The process group of the ranks that split this rank's sequences (``None`` when
        ``sequence_parallel_size`` is 1)."""
        return self._sequence_parallel_group

    @property
    def data_parallel_rank(self) -> int:
        """Which share of the rows this rank's sequence-parallel group takes."""
        return self.rank // self.sequence_parallel_size

    @property
    def data_parallel_size(self) -> int:
        """How many groups share the rows: ``world_size / sequence_parallel_size``."""
        return self.world_size // self.sequence_parallel_size

    @property
    def data_parallel_group(self) -> Any:
        """The ranks at this rank's place in every sequence-parallel group (``None``, every
        rank, when ``sequence_parallel_size`` is 1)."""
        return self._data_parallel_group

    @property
    def device(self) -> torch.device:
        if self._device is None:
            raise RuntimeError("call FSDPStrategy.setup_distributed() first")
        return self._device

    # ------------------------------------------------------------------ contexts
    def model_init_context(self) -> contextlib.AbstractContextManager[Any]:
        """Where the loop builds models: with ``meta_init``, ranks > 0 get structure only."""
        if self.config.meta_init and self.rank != 0:
            return sharding.transformers_on_meta()
        return contextlib.nullcontext()

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Backward passes inside accumulate gradients locally (no reduce-scatter, layers
        stay gathered); the last micro-batch of an optimizer batch runs outside."""
        return sharding.gradient_sync_off(model)

    def generation_context(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """All of ``model`` gathered on every rank while the body runs (generation)."""
        if not self._is_prepared(model):
            return contextlib.nullcontext()
        return sharding.unsharded(model, self._reshard)

    # ------------------------------------------------------------------ training
    def prepare(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, Any]:
        """Shard ``model``: each decoder layer a unit, ``model`` the root. The optimizer
        (created on the unsharded model) is rebound in place to the sharded parameters. A
        model without optimizer (reference, reward) is prepared for inference: frozen, in
        eval mode, its root freed after every forward, optionally kept on the CPU. With
        ``sequence_parallel_size`` > 1 an ``Actor``'s forward splits its sequences
        (``split_sequences``), and so does a trained critic's (``split_values``) and sequence
        classifier's (``split_scores``)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        cfg = self.config
        training = optimizer is not None
        trained_classifier = training and is_sequence_classifier(model)  # before fully_shard
        names = sharding.parameter_names(model, optimizer) if optimizer is not None else None
        full_state = None
        if cfg.meta_init and self.rank == 0:
            full_state = sharding.full_state_of(model)
        if cfg.precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            mp = MixedPrecisionPolicy()
        offload = cfg.cpu_offload if training else (cfg.cpu_offload or cfg.offload_reference)
        classes = sharding.layer_class_names(model, cfg.shard_modules)
        units = sharding.shard_units(model, classes)
        if not units and self.rank == 0:
            logger.warning(
                "fsdp: no module of the classes %s in %s (set strategy.shard_modules to the "
                "decoder layer class): the whole model is one unit, gathered at once",
                sorted(classes),
                type(model).__name__,
            )
        if not training:
            model.requires_grad_(False)
        self._reshard.update(
            sharding.apply_fsdp(
                model,
                mesh=self._mesh,
                units=units,
                mp_policy=mp,
                offload_policy=(
                    CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
                    if offload
                    else OffloadPolicy()
                ),
                reshard_after_forward=cfg.reshard_after_forward,
                root_reshard_after_forward=not training,
            )
        )
        if cfg.meta_init:
            sharding.materialize_from_rank_0(
                model, full_state, device=self.device, cpu_offload=offload
            )
        sharding.initialize_root(model)
        self._roots.append(model)
        if self.sequence_parallel_size > 1 and isinstance(model, Actor):
            split_sequences(model, self.sequence_parallel_group)
        elif self.sequence_parallel_size > 1 and training and isinstance(model, CriticModel):
            split_values(model, self.sequence_parallel_group)
        elif self.sequence_parallel_size > 1 and trained_classifier:
            split_scores(model, self.sequence_parallel_group)
        if optimizer is not None and names is not None:  # training
            sharding.rebind_optimizer(optimizer, model, names)
        else:
            model.eval()
        return model, optimizer, scheduler

    def _is_prepared(self, model: torch.nn.Module) -> bool:
        return any(model is root for root in self._roots)

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        loss.backward()

    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        max_grad_norm: float | None = None,
    ) -> float:
        """Clip to the global norm over all shards, step, schedule, zero. A non-finite norm
        (the same on every rank) skips the step on every rank."""
        params = [p for p in model.parameters() if p.grad is not None]
        clip = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else math.inf
        norm = 0.0
        if params:
            total = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            if hasattr(total, "full_tensor"):  # a DTensor: the norm over every shard
                total = total.full_tensor()
            norm = float(total)
        if math.isfinite(norm):
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        else:
            logger.warning("gradient norm is %s: optimizer step skipped", norm)
        optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor:
        return distributed.all_reduce(value, op)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate along dim 0 in rank order; ranks may hold different lengths."""
        return distributed.all_gather(tensor)

    def barrier(self) -> None:
        distributed.barrier()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        client_state: Mapping[str, Any] | None = None,
    ) -> None:
        """A sharded DCP checkpoint (see ``checkpointing.py``), swapped in atomically."""
        checkpointing.save_sharded(
            path, model=model, optimizer=optimizer, scheduler=scheduler, client_state=client_state
        )

    def load_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict[str, Any]:
        """Restore in place; needs the world size the checkpoint was written with."""
        return checkpointing.load_sharded(
            path, model=model, optimizer=optimizer, scheduler=scheduler
        )

    def export_hf(self, model: torch.nn.Module, path: str | Path, tokenizer: Any = None) -> None:
        """Gather the full weights (CPU) and write a Hugging Face folder on rank 0 (LoRA
        merged). ``model`` is a prepared model or a submodule of one (the transformers
        model inside the actor)."""
        root, prefix = self._root_of(model)
        checkpointing.export_hf(root, prefix, model, Path(path), tokenizer)

    def _root_of(self, model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
        for root in self._roots:
            for name, module in root.named_modules():
                if module is model:
                    return root, name
        raise ValueError(
            f"export_hf: {type(model).__name__} was not prepared by this strategy (nor is it "
            "inside a prepared model)"
        )
