"""``LocalStrategy``: one process, plain PyTorch.

AdamW and warm-up + cosine/constant schedules come from ``lightrft_core.optim``; gradient
accumulation is plain ``backward`` calls summed until ``optimizer_step``, which clips the
global norm. ``bf16`` is mixed precision: parameters and optimizer state stay fp32 and the
forward runs under ``autocast()``.

A checkpoint is a folder, swapped in atomically::

    model.safetensors     the model's state dict (tied tensors stored once)
    training_state.pt     optimizer, scheduler, RNG states, client_state (torch.save)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .. import distributed
from ..checkpoint import atomic_directory, damaged, does_not_fit, recover_directory
from ..export import merged_copy, write_hf_folder
from ..interfaces import StrategyBase
from ..interfaces.strategy import ReduceOp
from ..preflight import safetensors_problem
from ..rng import rng_states, set_rng_states

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


class LocalStrategy(StrategyBase):
    """Trains on one device in one process (CPU or a single GPU)."""

    name = "local"

    @dataclass
    class Config:
        # ------------------------------------------------------------ numerics
        precision: Literal["fp32", "bf16"] = field(
            default="fp32",
            metadata={
                "help": "fp32, or bf16 mixed precision (fp32 weights, bf16 autocast forward)."
            },
        )
        # ------------------------------------------------------------ placement
        device: Literal["auto", "cpu", "cuda"] = field(
            default="auto", metadata={"help": "Where to train; auto picks cuda when available."}
        )

        def __post_init__(self) -> None:
            if self.precision not in ("fp32", "bf16"):
                raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
            if self.device not in ("auto", "cpu", "cuda"):
                raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ process group
    def setup_distributed(self) -> None:
        """No process group; pick the device. (The run seeds every RNG with ``run.seed``.)"""
        self._device = distributed.pick_device(self.config.device)

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        if self._device is None:
            raise RuntimeError("call LocalStrategy.setup_distributed() first")
        return self._device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for forward passes: bf16 autocast when ``precision='bf16'``."""
        if self.config.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ training
    def prepare(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, Any]:
        """Move the model to the device (parameters keep their identity, so an optimizer
        created before stays bound); a model without optimizer is put in eval mode."""
        model.to(self.device)
        if optimizer is None:
            model.eval()
        return model, optimizer, scheduler

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
        """Clip, step, schedule, zero. A non-finite gradient norm skips the optimizer and
        scheduler step (weights unchanged) and is returned for the loop to log."""
        params = [p for p in model.parameters() if p.grad is not None]
        clip = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
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
        """One rank: a copy (floating point for ``mean``)."""
        return distributed.one_rank_reduce(value, op)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """One rank: a copy (a 0-d tensor becomes shape ``[1]``, as with several ranks)."""
        return distributed.one_rank_gather(tensor)

    def barrier(self) -> None:
        """Nothing to wait for in one process."""

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
        from safetensors.torch import save_model

        state = {
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_states(),
            "client_state": dict(client_state or {}),
        }
        with atomic_directory(path) as tmp:
            save_model(self.unwrap(model), str(tmp / MODEL_FILE))
            torch.save(state, tmp / STATE_FILE)

    def load_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict[str, Any]:
        """Restore model, optimizer, scheduler and RNG states in place; returns
        ``client_state``. ``client_state`` is read with ``weights_only=True``: keep it to
        Python numbers, strings, lists, dicts and tensors."""
        from safetensors.torch import load_model

        path = recover_directory(path)
        for name in (MODEL_FILE, STATE_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"no checkpoint at {path}: {name} is missing")
        target = self.unwrap(model)
        first = next(iter(target.parameters()), None)
        device = str(first.device) if first is not None else "cpu"
        problem = safetensors_problem(path / MODEL_FILE)
        if problem:
            raise damaged(path, MODEL_FILE, problem)
        try:
            load_model(target, str(path / MODEL_FILE), strict=True, device=device)
        except RuntimeError as exc:
            raise does_not_fit(path, exc) from None
        try:
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError) as exc:
            raise damaged(path, STATE_FILE, exc) from None
        if optimizer is not None:
            if state["optimizer"] is None:
                raise ValueError(f"checkpoint {path} has no optimizer state to restore")
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state["scheduler"] is None:
                raise ValueError(f"checkpoint {path} has no scheduler state to restore")
            scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        return dict(state["client_state"])

    def export_hf(self, model: torch.nn.Module, path: str | Path, tokenizer: Any = None) -> None:
        """Write a Hugging Face folder (LoRA merged into a copy), atomically."""
        write_hf_folder(merged_copy(self.unwrap(model)), path, tokenizer)
