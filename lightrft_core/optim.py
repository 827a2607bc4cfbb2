"""Optimizer and learning-rate schedule shared by the strategies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

AdamWImplementation = Literal["auto", "fused", "foreach", "for-loop"]
ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
#: Devices with a fused AdamW kernel that ``auto`` uses.
FUSED_DEVICES = ("cpu", "cuda")


def adamw_flags(
    params: Sequence[torch.Tensor], implementation: str, device: torch.device | None = None
) -> dict[str, bool | None]:
    """``torch.optim.AdamW``'s ``fused`` and ``foreach`` arguments for ``implementation``;
    ``device``: where the optimizer will step (null: where ``params`` are now).

    ``auto``: the fused kernel (one pass over all tensors; on the CPU several times faster
    than torch's default per-tensor loop) when every parameter is an fp32 tensor stepped on
    the CPU or a CUDA device, else torch's own default (both None: foreach on CUDA, the
    loop elsewhere).
    ``fused``, ``foreach``, ``for-loop``: that kernel. The kernels agree to the last bits
    of a float, not bit for bit."""
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(
            f"AdamW implementation must be one of {', '.join(ADAMW_IMPLEMENTATIONS)}, "
            f"got {implementation!r}"
        )
    if implementation == "auto":
        devices = {device.type} if device is not None else {p.device.type for p in params}
        fp32 = all(p.dtype == torch.float32 for p in params)
        supported = bool(params) and fp32 and devices <= set(FUSED_DEVICES)
        return {"fused": True if supported else None, "foreach": None}
    return {
        "fused": {"fused": True, "foreach": None},
        "foreach": {"fused": None, "foreach": True},
        "for-loop": {"fused": None, "foreach": False},
    }[implementation]


def adamw(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    implementation: str = "auto",
    device: torch.device | None = None,
) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; biases and 1-D weights (norms) get no decay.
    ``implementation`` and ``device``: the kernel (``adamw_flags``); it also holds after
    ``load_state_dict`` of a checkpoint written with another one."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    flags = adamw_flags(decay + no_decay, implementation, device)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=lr,
        betas=betas,
        fused=flags["fused"],
        foreach=flags["foreach"],
    )
    optimizer.register_load_state_dict_post_hook(_keep_implementation)
    return optimizer


def _keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the implementation flags the optimizer was built with
    (a checkpoint's param groups carry the writer's), and the fused kernel's step counters
    on the parameters' device."""
    for group in optimizer.param_groups:
        group["fused"] = optimizer.defaults["fused"]
        group["foreach"] = optimizer.defaults["foreach"]
        if not group["fused"]:
            continue
        for param in group["params"]:
            state: dict[str, Any] = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(param.device, torch.float32)


def lr_factor(step: int, *, name: str, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {name!r}; choose 'constant' or 'cosine'")


def lr_schedule(
    optimizer: torch.optim.Optimizer, *, name: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` implementing ``lr_factor`` (its state is saved in checkpoints)."""
    lr_factor(0, name=name, warmup_steps=warmup_steps, total_steps=total_steps)  # validate name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, name=name, warmup_steps=warmup_steps, total_steps=total_steps),
    )
