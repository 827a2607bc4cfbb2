"""``DeepSpeedStrategy``: data-parallel training with DeepSpeed ZeRO stage 1, 2 or 3.

One process per device, launched by ``torchrun`` (a single process without torchrun works
too: a group of one). The DeepSpeed config is generated from the typed options
(``ds_config.py``); ``backward`` only accumulates gradients and ``optimizer_step`` is the
accumulation boundary (DeepSpeed's unmanaged gradient accumulation), so the loop's
``LossScale`` arithmetic holds unchanged: DeepSpeed averages gradients over ranks and never
divides by an accumulation count. deepspeed is imported in ``setup_distributed``, never
when the plugin is loaded. ``docs/deepspeed.md`` is the user's guide.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from lightrft_core import distributed
from lightrft_core.export import check_exportable, merged_copy, write_hf_folder
from lightrft_core.interfaces import StrategyBase
from lightrft_core.interfaces.strategy import ReduceOp
from lightrft_core.optim import adamw

from . import checkpointing, zero3
from .ds_config import inference_config, resolve_config, zero_stage_of
from .options import DeepSpeedOptions
from .runtime import import_deepspeed
from .wrapper import DeepSpeedModel, DictOutputs

logger = logging.getLogger(__name__)


def _is_peft_model(model: torch.nn.Module) -> bool:
    return any(type(m).__module__.startswith("peft.") for m in model.modules())


class DeepSpeedStrategy(StrategyBase):
    """Trains with DeepSpeed ZeRO (stage 1, 2 or 3) on every rank of a torchrun job."""

    name = "deepspeed"
    Config = DeepSpeedOptions

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._device: torch.device | None = None
        self._deepspeed: Any = None
        self.ds_config: dict[str, Any] = {}
        self._engines: list[Any] = []  # every engine prepare() built, training first

    # ------------------------------------------------------------------ process group
    def setup_distributed(self) -> None:
        """Pick this rank's device, import deepspeed, join the torchrun process group (or
        make a group of one) and hand it to DeepSpeed, build the DeepSpeed config. (The run
        seeds every RNG with ``run.seed``.)"""
        self._device = distributed.pick_device(self.config.device)
        device_type = self._device.type
        self.ds_config = resolve_config(self.config, pin_memory=device_type == "cuda")
        self._deepspeed = import_deepspeed(
            device_type=device_type, extensions_dir=self.config.torch_extensions_dir
        )
        backend = distributed.backend_for(self.config.backend, self._device)
        distributed.init_process_group(backend, timeout_s=self.config.timeout_s)
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it (no torchrun)
        self._deepspeed.init_distributed(  # adopts the group above
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=timedelta(seconds=self.config.timeout_s),
        )

    def _require_setup(self) -> None:
        if self._deepspeed is None:
            raise RuntimeError("call DeepSpeedStrategy.setup_distributed() first")

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    @property
    def device(self) -> torch.device:
        if self._device is None:
            raise RuntimeError("call DeepSpeedStrategy.setup_distributed() first")
        return self._device

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage of the final config (the options', unless the JSON file changed it)."""
        return zero_stage_of(self.ds_config) if self.ds_config else self.config.zero_stage

    # ------------------------------------------------------------------ training
    def create_optimizer(
        self,
        model: torch.nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        implementation: str = "auto",
    ) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (no decay on biases and norms): torch's (its
        kernel per ``implementation``; the fused one serves the CPU when offloaded too), or
        DeepSpeed's CPU Adam in AdamW mode with ``optimizer: cpu_adam``."""
        if self.config.optimizer == "adamw":
            return adamw(
                model,
                lr=lr,
                weight_decay=weight_decay,
                betas=betas,
                implementation=implementation,
                device=self.device,
            )
        self._require_setup()
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        groups = adamw(model, lr=lr, weight_decay=weight_decay, betas=betas).param_groups
        params = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups]
        return DeepSpeedCPUAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def prepare(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, Any]:
        """Build a DeepSpeed engine over ``model`` and return it as a ``DeepSpeedModel``,
        with the engine's (ZeRO) optimizer and the scheduler the engine steps.

        Without optimizer (reference or reward model): under ZeRO-3 an inference engine with
        partitioned parameters, under ZeRO-1/2 the module itself on the device (in the
        training dtype) -- there is nothing to shard without optimizer states.
        """
        self._require_setup()
        if _is_peft_model(model) and self.zero_stage == 3:
            raise ValueError(
                "LoRA (peft) models are supported with ZeRO stage 1 and 2; ZeRO-3 export and "
                "generation of adapters is not: set strategy.zero_stage to 2"
            )
        if optimizer is None:
            return self._prepare_for_inference(model), None, scheduler
        outputs = DictOutputs(model)
        engine, ds_optimizer, _, ds_scheduler = self._deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=copy.deepcopy(self.ds_config),
        )
        self._engines.insert(0, engine)
        return DeepSpeedModel(engine, outputs), ds_optimizer, ds_scheduler

    def _prepare_for_inference(self, model: torch.nn.Module) -> torch.nn.Module:
        model.requires_grad_(False)
        if self.zero_stage != 3:
            if self.ds_config.get("bf16", {}).get("enabled"):
                model.to(torch.bfloat16)
            return model.to(self.device).eval()
        outputs = DictOutputs(model)
        engine, *_ = self._deepspeed.initialize(
            model=model, config=inference_config(self.ds_config)
        )
        self._engines.append(engine)
        prepared = DeepSpeedModel(engine, outputs)
        prepared.eval()
        return prepared

    def _engine_of(self, model: torch.nn.Module) -> Any:
        if isinstance(model, DeepSpeedModel):
            return model.engine
        for engine in self._engines:
            if model is engine or any(m is model for m in engine.module.modules()):
                return engine
        raise ValueError(
            f"{type(model).__name__} was not prepared by this deepspeed strategy "
            "(pass what prepare() returned)"
        )

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, DeepSpeedModel) else model

    def weights_for_sync(self, actor: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """The actor's weights with its ZeRO-3 partitions gathered while they are read
        (collective: every rank drains it)."""
        read = super().weights_for_sync
        return zero3.named_gathered_weights(self.unwrap(actor), lambda: read(actor))

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        """Accumulate the gradients of ``loss`` as given (no division by any count)."""
        self._engine_of(model).backward(loss, scale_wrt_gas=False)

    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        max_grad_norm: float | None = None,
    ) -> float:
        """The accumulation boundary: reduce gradients over ranks, clip to the global norm,
        step optimizer and scheduler (both through the engine), zero the gradients. A
        non-finite norm skips the update (weights and schedule unchanged)."""
        engine = self._engine_of(model)
        clip = float(max_grad_norm) if max_grad_norm is not None and max_grad_norm > 0 else 0.0
        engine._config.gradient_clipping = clip
        engine.optimizer.clip_grad = clip
        if scheduler is not None and scheduler is not engine.lr_scheduler:
            raise ValueError(
                "optimizer_step got a scheduler the engine does not step; pass "
                "the one prepare() returned"
            )
        engine.step()
        norm = engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        if not math.isfinite(norm):
            logger.warning("gradient norm is %s: optimizer step skipped", norm)
        return norm

    # ------------------------------------------------------------------ generation
    @contextlib.contextmanager
    def generation_context(self, model: torch.nn.Module) -> Iterator[None]:
        """Whole parameters on every rank for the duration (ZeRO-3): forward passes of the
        module's submodules inside (token-by-token generation by the ``hf`` engine on the
        shared transformers model) run without any collective, so ranks may generate
        different numbers of tokens. Collective on entry and exit; nothing to do under
        ZeRO-1/2. ``model``: what ``prepare`` returned, or a module inside it. Call the inner
        transformers model inside, not the prepared model itself."""
        if self.zero_stage != 3:
            yield
            return
        with zero3.held_gathered(self._engine_of(model)):
            yield

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor:
        return distributed.all_reduce(value, op)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate along dim 0 in rank order (shapes may differ in dim 0 only)."""
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
        """A DeepSpeed checkpoint (every rank's ZeRO shard) plus RNG states and
        ``client_state``, swapped in atomically (see ``checkpointing.py``). Collective."""
        engine = self._engine_of(model)
        checkpointing.save(
            path,
            engine=engine,
            rank=self.rank,
            world_size=self.world_size,
            meta={"zero_stage": self.zero_stage, "precision": self.config.precision},
            client_state=client_state,
        )

    def load_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict[str, Any]:
        """Restore model, optimizer and scheduler (in place, same world size), this rank's
        RNG states; returns ``client_state``. Collective."""
        client_state, _ = checkpointing.load(
            path,
            engine=self._engine_of(model),
            rank=self.rank,
            world_size=self.world_size,
            load_optimizer=optimizer is not None,
            load_scheduler=scheduler is not None,
        )
        return client_state

    def export_hf(self, model: torch.nn.Module, path: str | Path, tokenizer: Any = None) -> None:
        """Rank 0 writes a full Hugging Face folder (ZeRO-3: whole tensors gathered module by
        module onto rank 0; LoRA merged into a copy), atomically. Collective."""
        target = self.unwrap(model)
        check_exportable(target)
        partitioned = bool(zero3.partitioned_parameters(target))
        state = zero3.full_state_dict(target, rank=self.rank) if partitioned else None
        if self.is_rank_0:
            if state is not None:
                write_hf_folder(target, path, tokenizer, state_dict=state)
            else:
                write_hf_folder(merged_copy(target), path, tokenizer)
        self.barrier()
