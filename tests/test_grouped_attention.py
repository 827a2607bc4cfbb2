"""Grouped key/value heads read in place under a mask (``grouped_attention.py``): the same
numbers as transformers' ``sdpa`` function, which copies them, and the ``hf`` engine's
rollouts unchanged, bitwise."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lightrft_core.actors import varlen_attention
from lightrft_core.actors.grouped_attention import copies_grouped_kv, grouped_sdpa
from lightrft_core.engines import HFEngine
from lightrft_core.interfaces import SamplingParams
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model

TOKENIZER = build_byte_tokenizer()
#: Prompts of 2 to 9 tokens: the batch is left-padded.
PROMPTS = [[72, 101, 108, 108, 111], [87, 111], [40, 41, 42, 43, 44, 45, 46, 47, 48]]


class GroupedHeads(torch.nn.Module):
    """What transformers' ``sdpa`` function reads from an attention module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def left_padded_mask(pads: list[int], queries: int, keys: int) -> torch.Tensor:
    """A boolean ``[B, 1, q, k]`` mask: causal (the queries are the last ``q`` positions),
    row ``b``'s first ``pads[b]`` keys hidden."""
    causal = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    mask = causal.expand(len(pads), 1, queries, keys).clone()
    for row, pad in enumerate(pads):
        mask[row, :, :, :pad] = False
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [1, 9], ids=["decode", "prefill"])
def test_grouped_sdpa_equals_transformers_copy_bitwise(dtype: torch.dtype, queries: int) -> None:
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, keys = 8, 2, 12

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dtype)

    query = draw((3, heads, queries, 16))
    key, value = draw((3, kv_heads, keys, 16)), draw((3, kv_heads, keys, 16))
    mask = left_padded_mask([0, 2, 3], queries, keys)
    assert copies_grouped_kv(query, key, value, {})
    expected, _ = sdpa_attention_forward(GroupedHeads(4), query, key, value, mask, scaling=0.25)
    got = grouped_sdpa(query, key, value, mask, scaling=0.25)
    assert got.shape == (3, queries, heads, 16) and got.is_contiguous()
    assert torch.equal(got, expected)


def test_only_grouped_calls_without_gradients_come_here() -> None:
    query, key = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 2, 8)
    assert copies_grouped_kv(query, key, key, {"sliding_window": None})
    assert not copies_grouped_kv(query, query, query, {})  # no groups: nothing copied
    assert not copies_grouped_kv(query.requires_grad_(), key, key, {})  # training
    assert not copies_grouped_kv(query.detach(), key, key, {"position_bias": key})


def rollout(model: Any) -> list[tuple[list[int], list[float]]]:
    engine = HFEngine(HFEngine.Config())
    engine.setup(model=model, tokenizer=TOKENIZER)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=5)
    return [(o.token_ids, o.log_probs) for o in engine.generate(PROMPTS, params)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_engine_rollouts_are_bitwise_those_of_transformers_copy(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_tiny_model(
        "5m",
        vocab_size=len(TOKENIZER),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).to(dtype)
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(args[0].shape[2])  # query positions: the prefill's, then 1 per step
        return grouped_sdpa(*args, **kwargs)

    monkeypatch.setattr(varlen_attention, "grouped_sdpa", counted)
    grouped = rollout(model)
    assert calls == [9] + [1] * 5  # one layer: the prefill and every decoding step
    monkeypatch.setattr(varlen_attention, "copies_grouped_kv", lambda *_: False)
    assert rollout(model) == grouped  # tokens and log-probs, bitwise
