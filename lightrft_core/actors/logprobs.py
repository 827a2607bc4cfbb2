"""Memory-efficient per-token log-probs and entropy (pure tensor functions).

The naive ``log_softmax(logits.float()).gather(...)`` builds a ``[B, T, V]`` fp32 tensor,
which for a 150k vocabulary is the largest tensor of a training step. Here the flattened
token dimension is cut into chunks: for each chunk the logits are produced (by applying
the output head to hidden states, or taken from given logits), upcast to fp32 for that
chunk only, and reduced to ``chosen - logsumexp`` (and the entropy). With gradients on,
each chunk is recomputed in the backward pass (``torch.utils.checkpoint``), so neither the
forward nor the backward ever holds more than one chunk of fp32 logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

#: Turns a chunk of inputs ``[n, D]`` into logits ``[n, V]`` (any dtype).
LogitFn = Callable[[torch.Tensor], torch.Tensor]


def log_probs_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, *, return_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(target)`` and optionally the entropy for one chunk of logits ``[n, V]``.

    Computed in fp32 as ``chosen - logsumexp`` without a full log-softmax tensor.
    """
    logits = logits.float()  # [n, V]
    log_norm = torch.logsumexp(logits, dim=-1)  # [n]
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [n]
    log_probs = chosen - log_norm
    if not return_entropy:
        return log_probs, None
    probs = torch.softmax(logits, dim=-1)  # [n, V]
    entropy = log_norm - (probs * logits).sum(-1)  # [n]
    return log_probs, entropy


def chunked_token_log_probs(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    logit_fn: LogitFn | None = None,
    *,
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N]`` (fp32) of ``targets [N]`` given ``inputs [N, D]``, chunk by chunk.

    ``inputs`` are hidden states passed through ``logit_fn`` (e.g. the LM head), or logits
    themselves when ``logit_fn`` is ``None``. Returns ``(log_probs, entropy or None)``;
    gradients flow to ``inputs`` and to the parameters ``logit_fn`` uses.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs have {inputs.shape[0]} positions but targets {targets.shape[0]}")

    def one_chunk(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = x if logit_fn is None else logit_fn(x)  # [n, V]
        log_probs, entropy = log_probs_from_logits(logits, y, return_entropy=return_entropy)
        return (log_probs,) if entropy is None else (log_probs, entropy)

    recompute = torch.is_grad_enabled()
    pieces: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, inputs.shape[0], chunk_size):
        x = inputs[start : start + chunk_size]  # [n, D]
        y = targets[start : start + chunk_size]  # [n]
        if recompute:
            pieces.append(checkpoint(one_chunk, x, y, use_reentrant=False))
        else:
            pieces.append(one_chunk(x, y))

    if not pieces:  # no position to score
        empty = inputs.new_zeros((0,), dtype=torch.float32)
        return empty, (empty.clone() if return_entropy else None)
    log_probs = torch.cat([p[0] for p in pieces])
    entropy = torch.cat([p[1] for p in pieces]) if return_entropy else None
    return log_probs, entropy
