"""Token sampling for the ``hf`` engine's decoding loop: a few tensor ops per step, no host
synchronisation.

``sample_next`` draws the same tokens as ``torch.multinomial(probs, 1, generator=g)``
(which draws ``Exp(1)`` noise ``q`` over the whole ``[B, V]`` and takes
``argmax(probs / q)``), but takes the noise as an argument: the caller can draw it for the
full batch and keep only the rows still decoding, so that dropping finished rows from the
batch leaves the random stream (and every later sample) unchanged, and no validity check of
``probs`` forces a device-to-host copy on accelerators.
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / top-p (nucleus) set to ``-inf``. ``logits``: [B, V].

    Top-k alone: one ``topk``. Top-p (with or without top-k): one sort, both cuts made on
    the sorted logits (top-p on the distribution that top-k left) and mapped back once."""
    vocab = logits.shape[-1]
    use_top_k = 0 < top_k < vocab
    if top_p >= 1.0:
        if not use_top_k:
            return logits
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        return logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    if use_top_k:  # ties with the k-th logit stay, as with topk
        kth = sorted_logits[:, top_k - 1 : top_k]
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the tokens ranked above it already reach top_p (keeps >= 1)
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    if use_top_k:
        drop_sorted |= sorted_logits == float("-inf")
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def exponential_noise(
    shape: tuple[int, int], *, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``Exp(1)`` noise of ``shape`` (fp32), drawn as ``torch.multinomial`` draws it."""
    return torch.empty(shape, device=device).exponential_(1, generator=generator)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One token per row from ``logits`` [B, V] (fp32); returns [B] token ids. Greedy
    (``temperature == 0``) needs no ``noise``; otherwise ``noise`` is ``Exp(1)`` [B, V]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if noise is None:
        raise ValueError("sampling at temperature > 0 needs Exp(1) noise")
    scaled = logits if temperature == 1 else logits / temperature
    probs = torch.softmax(filter_logits(scaled, top_k=top_k, top_p=top_p), dim=-1)
    return (probs / noise).argmax(dim=-1)
