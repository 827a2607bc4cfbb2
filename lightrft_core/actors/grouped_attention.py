"""Grouped-query attention under a mask without copying the keys and values, on CPU.

transformers' ``sdpa`` attention function expands the key and value heads to the query
heads (``repeat_kv``: a copy of the whole K and V, every layer, every decoding step)
whenever an attention mask is given -- always, for a left-padded generation batch -- and
passes ``enable_gqa=True`` to SDPA only without one, because on CUDA a masked grouped call
falls back to SDPA's math kernel. On CPU the masked kernel reads grouped heads itself, with
the same numbers (bitwise, fp32 and bf16: each query head reads its group's key head in
place of that head's copy). ``varlen_sdpa_attention`` sends such calls here.

Only forwards without gradients come here (generation, reference and old log-probs): in a
backward, SDPA sums the key and value gradients of a group in another order than
``repeat_kv``'s backward, which changes them by float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def copies_grouped_kv(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kwargs: dict[str, Any],
) -> bool:
    """Whether transformers' ``sdpa`` function, given an attention mask, would copy K and V
    for this call and ``grouped_sdpa`` can take it instead: grouped heads, CPU, no
    gradients, none of the function's other inputs (``position_bias``, a paged ``cache``).
    Without a mask transformers passes ``enable_gqa`` itself."""
    return (
        query.shape[1] != key.shape[1]
        and query.device.type == "cpu"
        and not (query.requires_grad or key.requires_grad or value.requires_grad)
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None
        and not kwargs.get("output_attentions", False)
    )


def grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """transformers' ``sdpa`` attention for ``query [B, H, q, D]`` and grouped
    ``key``/``value [B, Hkv, k, D]`` under ``attention_mask``, with the keys and values read
    in place; returns ``[B, q, H, Dv]``. The mask holds causality (transformers passes
    ``is_causal`` only without a mask)."""
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous()
