"""Packed rows under sequence parallelism in this process: the attention of whole packed rows
each kernel gets (``packed_row_context``, worked out by hand), and the split forward of packed
rows on a one-rank group equal to the actor's packed and padded forwards. Two ranks, slices
cutting through sequences: ``test_ulysses_distributed.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.actors.packing import pack_padded_rows, unpack_to_padded
from lightrft_core.actors.varlen_attention import SEGMENTS_KWARG, SegmentRuns
from lightrft_plugin_patches.sequence_parallel import (
    packed_row_context,
    sequence_parallel_forward,
)
from lightrft_plugin_patches.ulysses import UlyssesAttention

#: One row: a sequence of 3 tokens, one of 2, one padding column.
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0]])
VALID = torch.tensor([[True, True, True, True, True, False]])
#: Query i (row) may read key j (column): causal inside each sequence; padding reads itself.
ALLOWED = torch.tensor(
    [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ],
    dtype=torch.bool,
)


def test_eager_gets_the_block_diagonal_additive_mask() -> None:
    context = packed_row_context("group", VALID, POSITIONS, "eager", torch.float32)
    assert context.group == "group" and context.kernel_kwargs == {}
    assert context.attention_mask is not None
    assert context.attention_mask.shape == (1, 1, 6, 6)
    minimum = torch.finfo(torch.float32).min
    assert torch.equal(context.attention_mask[0, 0], torch.where(ALLOWED, 0.0, minimum))


def test_sdpa_on_one_row_runs_per_sequence_and_on_several_rows_gets_a_mask() -> None:
    one_row = packed_row_context(None, VALID, POSITIONS, "sdpa", torch.float32)
    assert one_row.attention_mask is None
    # runs (start, count, length): the 3 tokens, the 2 tokens, the padding column
    assert one_row.kernel_kwargs == {
        SEGMENTS_KWARG: SegmentRuns(((0, 1, 3), (3, 1, 2), (5, 1, 1)), 6)
    }
    rows = packed_row_context(
        None, VALID.repeat(2, 1), POSITIONS.repeat(2, 1), "sdpa", torch.float32
    )
    assert rows.kernel_kwargs == {}
    assert rows.attention_mask is not None
    assert torch.equal(rows.attention_mask, ALLOWED.expand(2, 1, 6, 6))


def test_flash_attention_reads_the_row_s_positions() -> None:
    context = packed_row_context(None, VALID, POSITIONS, "flash_attention_2", torch.bfloat16)
    assert context.attention_mask is None
    assert context.kernel_kwargs.keys() == {"position_ids"}
    assert context.kernel_kwargs["position_ids"] is POSITIONS
    with pytest.raises(ValueError, match="single row"):
        packed_row_context(
            None, VALID.repeat(2, 1), POSITIONS.repeat(2, 1), "flash_attention_2", torch.bfloat16
        )
    with pytest.raises(ValueError, match="flex_attention"):
        packed_row_context(None, VALID, POSITIONS, "flex_attention", torch.float32)


def tiny_llama(attention: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.fixture
def one_rank_group() -> Iterator[Any]:
    """A gloo group of this process alone, destroyed after the test when made here; the
    modeling modules left unpatched."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    UlyssesAttention().apply()
    try:
        yield dist.group.WORLD
    finally:
        UlyssesAttention().revert()
        if created:
            dist.destroy_process_group()


@pytest.mark.parametrize(("attention", "one_row"), [("eager", False), ("sdpa", True)])
def test_a_one_rank_group_gives_the_packed_and_padded_log_probs(
    one_rank_group: Any, attention: str, one_row: bool
) -> None:
    actor = ActorLanguage.from_model(tiny_llama(attention))
    tokens = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(tokens)
    mask[1, -2:] = 0
    mask[2, -4:] = 0
    padded = actor(tokens, mask, return_entropy=True)
    packed = pack_padded_rows(tokens, mask, one_row=one_row)
    inputs = (packed.sequences, packed.attention_mask)
    expected = actor(*inputs, position_ids=packed.position_ids, return_entropy=True)
    split = sequence_parallel_forward(
        actor, *inputs, group=one_rank_group, position_ids=packed.position_ids, return_entropy=True
    )
    assert split.entropy is not None and expected.entropy is not None
    torch.testing.assert_close(split.log_probs, expected.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(split.entropy, expected.entropy, rtol=0, atol=1e-5)
    back = unpack_to_padded(split.log_probs, packed.spans, width=5)
    torch.testing.assert_close(back, padded.log_probs, rtol=0, atol=1e-5)
    assert int((back != 0).sum()) == 5 + 3 + 1  # every scored token, none across sequences
