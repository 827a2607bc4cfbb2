"""Variable-length SDPA attention for packed rows, for devices without flash-attention.

Packed sequences lie back to back in one row; flash-attention's variable-length kernel keeps
attention inside each. Without it, a block-diagonal ``[R, 1, L, L]`` mask costs the square of
the row width and takes SDPA off its fast kernels. Here attention runs instead as
``scaled_dot_product_attention(is_causal=True)`` on each sequence, no mask at all; sequences
of equal length that follow each other in the row go through one call as a batch. The cost
is ``Σ lᵢ²``, as in the padded batch, without its padding.

How it reaches the model: ``install()`` puts ``varlen_sdpa_attention`` in transformers'
``AttentionInterface`` in place of ``sdpa`` (idempotent, on the first packed forward, never at
import). It runs the original ``sdpa`` function unless the forward carries the keyword
``packed_segments`` (a ``SegmentRuns``), which transformers' text models (Llama, Qwen2, ...)
hand down unchanged from the model's forward to every attention call (gradient checkpointing
included). A packed forward gives the model one row, a 2-D attention mask of ones (so that
transformers builds no 4-D mask) and ``packed_segments``; ``packed_text_inputs`` builds them,
and after the forward ``SegmentRuns.check_read`` refuses a model whose attention never saw
them (one that does not hand transformers' keyword arguments down).

Forwards without ``packed_segments`` under a mask with grouped key/value heads, on CPU and
without gradients (generation: the ``hf`` engine calls ``install()`` in its setup), run
SDPA on the grouped heads in place of transformers' copy of them (``grouped_attention.py``,
the same numbers); every other call runs transformers' own function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F

from .grouped_attention import copies_grouped_kv, grouped_sdpa

#: The model-forward keyword that carries a packed row's ``SegmentRuns`` to the attention.
SEGMENTS_KWARG = "packed_segments"

_original_sdpa: Callable[..., Any] | None = None


class SegmentRuns:
    """The sequences of one packed row as runs ``(start, count, length)``: ``count``
    consecutive sequences of ``length`` tokens each from column ``start``; the runs cover
    the row's ``width`` columns in order. ``read``: set by the attention that used them
    (``check_read``). A plain class, not a dataclass: strategies that move a forward's
    inputs rebuild dataclasses on the way (FSDP's ``_recursive_to``), and the attention must
    mark this very object."""

    __slots__ = ("read", "runs", "width")

    def __init__(self, runs: tuple[tuple[int, int, int], ...], width: int) -> None:
        self.runs = runs
        self.width = width
        self.read = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentRuns):
            return NotImplemented
        return (self.runs, self.width) == (other.runs, other.width)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SegmentRuns(runs={self.runs}, width={self.width})"

    def check_read(self, model: torch.nn.Module) -> None:
        """Refuse a forward whose attention never read the segments: the model's attention
        does not take transformers' keyword arguments, so it attended across sequences."""
        if not self.read:
            raise RuntimeError(
                f"{type(model).__name__}'s attention did not read the packed sequences "
                f"({SEGMENTS_KWARG}): its packed forward is wrong; set trainer.packing=false "
                "or model.attn_implementation=eager"
            )


def check_segments_read(inputs: Mapping[str, Any], model: torch.nn.Module) -> None:
    """After a forward of ``model`` on ``inputs`` (``packed_text_inputs``' or a padded
    forward's): refuse it when it carried ``packed_segments`` that its attention never read."""
    segments = inputs.get(SEGMENTS_KWARG)
    if segments is not None:
        segments.check_read(model)


def segment_runs(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> SegmentRuns:
    """The sequences of packed rows ``[R, L]`` read as one row of ``R * L`` columns: a
    sequence starts where ``position_ids`` is 0 on a real token, and each row's padding
    (``attention_mask == 0``, at its end) is a segment of its own (it sees only padding)."""
    real = attention_mask.reshape(-1).bool()
    first_of_row = torch.zeros_like(position_ids, dtype=torch.bool)
    first_of_row[:, 0] = True
    first_of_row = first_of_row.reshape(-1)
    after_real = torch.cat([real.new_zeros(1), real[:-1]])
    starts = first_of_row | (real & (position_ids.reshape(-1) == 0)) | (~real & after_real)
    bounds = [*starts.nonzero().flatten().tolist(), real.numel()]
    lengths = [end - start for start, end in pairwise(bounds)]
    runs: list[tuple[int, int, int]] = []
    start = 0
    for length in lengths:
        if runs and runs[-1][2] == length:
            run_start, count, _ = runs[-1]
            runs[-1] = (run_start, count + 1, length)
        else:
            runs.append((start, 1, length))
        start += length
    return SegmentRuns(tuple(runs), start)


def segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: SegmentRuns,
    *,
    causal: bool = True,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """Attention of one packed row inside each of its sequences.

    ``query [1, H, N, D]``, ``key``/``value [1, Hkv, N, D]`` (``H`` a multiple of ``Hkv``:
    grouped-query attention); returns ``[1, N, H, Dv]``, the layout transformers' attention
    functions return."""
    if query.shape[0] != 1 or query.shape[2] != segments.width:
        raise ValueError(
            f"packed attention reads one row of {segments.width} tokens, got query "
            f"{tuple(query.shape)}"
        )
    heads, gqa = query.shape[1], query.shape[1] != key.shape[1]
    sizes = [count * length for _, count, length in segments.runs]
    # split, not slices: its backward is one concatenation, not a zero-filled tensor per run
    pieces = zip(*(t[0].split(sizes, dim=1) for t in (query, key, value)), strict=True)
    outputs = []
    for (_, count, length), (q, k, v) in zip(segments.runs, pieces, strict=True):
        q, k, v = (t.unflatten(1, (count, length)).transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(  # [count, H, length, Dv]
            q,
            k,
            v,
            dropout_p=dropout,
            scale=scaling,
            is_causal=causal and length > 1,
            enable_gqa=gqa,
        )
        outputs.append(out.transpose(1, 2).reshape(count * length, heads, -1))
    return torch.cat(outputs).unsqueeze(0)


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention function, per sequence when the forward carries
    ``packed_segments`` (the mask is then ignored: it is the plain causal one or none), and
    without copying grouped keys and values where ``copies_grouped_kv`` says so."""
    segments: SegmentRuns | None = kwargs.pop(SEGMENTS_KWARG, None)
    if _original_sdpa is None:
        raise RuntimeError("varlen_sdpa_attention runs only once install() has been called")
    if segments is None:
        if attention_mask is not None and copies_grouped_kv(query, key, value, kwargs):
            return grouped_sdpa(query, key, value, attention_mask, dropout, scaling), None
        return _original_sdpa(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    if kwargs.get("sliding_window") is not None:
        raise ValueError("packed SDPA attention does not support sliding-window layers")
    segments.read = True
    causal = bool(module.is_causal) if is_causal is None else is_causal
    out = segment_attention(
        query, key, value, segments, causal=causal, dropout=dropout, scaling=scaling
    )
    return out, None


def install() -> None:
    """Make ``varlen_sdpa_attention`` transformers' ``sdpa`` attention function (idempotent);
    forwards without ``packed_segments`` run the function it replaces."""
    global _original_sdpa
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is varlen_sdpa_attention:
        return
    _original_sdpa = current
    AttentionInterface.register("sdpa", varlen_sdpa_attention)


def packed_text_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
) -> dict[str, Any]:
    """A transformers text model's inputs for packed rows ``[R, L]`` on SDPA: the rows as one,
    a 2-D mask of ones (transformers then builds no 4-D mask), the position ids and the
    ``packed_segments`` that confine attention to each sequence (``install()`` done)."""
    install()
    segments = segment_runs(position_ids, attention_mask)
    return {
        "input_ids": input_ids.reshape(1, -1),
        "attention_mask": torch.ones_like(input_ids).reshape(1, -1),
        "position_ids": position_ids.reshape(1, -1),
        SEGMENTS_KWARG: segments,
    }
