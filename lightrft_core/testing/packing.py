"""Packed = padded, for actor tests: an actor's log-probs, entropies and gradients on packed
rows (the trainer's way, and all in one row) against its padded run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..actors.packing import packed_actor_forward
from ..interfaces import Actor, ActorOutput
from ..trainer.micro_batches import actor_forward


def log_probs_and_grads(
    actor: Actor, forward: Callable[[], ActorOutput]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs, entropies and the gradients of ``-Σ log-probs + Σ entropy``."""
    actor.zero_grad()
    out = forward()
    assert out.entropy is not None
    (out.entropy.sum() - out.log_probs.sum()).backward()
    grads = {n: p.grad.clone() for n, p in actor.named_parameters() if p.grad is not None}
    actor.zero_grad()
    return out.log_probs.detach(), out.entropy.detach(), grads


def assert_packed_equals_padded(
    actor: Actor, sequences: torch.Tensor, mask: torch.Tensor, media: dict[str, Any]
) -> None:
    """Packed rows (``actor_forward`` with packing, and ``packed_actor_forward`` in one row)
    give the padded run's log-probs and entropies (1e-5) and gradients (1e-4 relative)."""
    padded = log_probs_and_grads(
        actor, lambda: actor(sequences, mask, return_entropy=True, **media)
    )
    assert padded[0].abs().sum() > 0
    ways = {
        "rows": lambda: actor_forward(
            actor, actor, sequences, mask, packing=True, return_entropy=True, **media
        ),
        "one_row": lambda: packed_actor_forward(
            actor, sequences, mask, one_row=True, return_entropy=True, **media
        ),
    }
    for way, forward in ways.items():
        log_probs, entropy, grads = log_probs_and_grads(actor, forward)
        torch.testing.assert_close(log_probs, padded[0], rtol=1e-5, atol=1e-5, msg=way)
        torch.testing.assert_close(entropy, padded[1], rtol=1e-5, atol=1e-5, msg=way)
        assert grads.keys() == padded[2].keys()
        for name, grad in padded[2].items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
