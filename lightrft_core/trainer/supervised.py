"""What the supervised loops (``lightrft sft``, ``lightrft rm``) share beyond the run's start
and finish (``bootstrap.py``): the optimizer, schedule and preparation of the trained model
from the ``sft`` section."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import LightRFTConfig


def prepare_supervised(
    cfg: LightRFTConfig, strategy: Any, model: torch.nn.Module, num_samples: int
) -> tuple[torch.nn.Module, Any, Any, int]:
    """``(model, optimizer, scheduler, total_steps)`` for ``num_samples`` training samples:
    ``sft.epochs`` passes of ``sft.batch_size``, capped by ``sft.max_steps``; AdamW with the
    ``sft`` learning rate, weight decay and schedule; the model prepared by the strategy."""
    s = cfg.sft
    total = s.epochs * math.ceil(num_samples / s.batch_size)
    if s.max_steps:
        total = min(total, s.max_steps)
    optimizer = strategy.create_optimizer(
        model,
        lr=s.learning_rate,
        weight_decay=s.weight_decay,
        implementation=s.adamw_implementation,
    )
    scheduler = strategy.create_scheduler(
        optimizer, name=s.lr_scheduler, warmup_steps=s.warmup_steps, total_steps=total
    )
    model, optimizer, scheduler = strategy.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler, total
