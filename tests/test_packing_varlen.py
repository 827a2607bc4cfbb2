"""Packed rows on SDPA without a mask (``lightrft_core/actors/varlen_attention.py``): the
segments, the per-sequence attention, and the language actor's packed forward and backward
against the padded batch."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from lightrft_core.actors import ActorLanguage, packed_causal_mask, varlen_attention
from lightrft_core.actors.options import forward_attention
from lightrft_core.actors.packing import pack_padded_rows, packed_actor_forward, packed_model_inputs
from lightrft_core.actors.varlen_attention import SegmentRuns, segment_attention, segment_runs
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import Actor, ActorModality
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.trainer.micro_batches import resolve_packing

VOCAB = len(build_byte_tokenizer())
#: A 2-layer Qwen2 of width 64: 4 query heads, 2 key/value heads (grouped-query attention).
SMALL = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def test_segment_runs_batch_consecutive_sequences_of_equal_length() -> None:
    # row 0: sequences of 3 and 3; row 1: sequences of 2 and 2, then 2 padding columns
    positions = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    assert segment_runs(positions, mask) == SegmentRuns(((0, 2, 3), (6, 3, 2)), 12)
    # a sequence of 1 between two of 2; padding of 1 column after a sequence of 1
    positions = torch.tensor([[0, 1, 0, 0, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    assert segment_runs(positions, mask).runs == ((0, 1, 2), (2, 1, 1), (3, 1, 2), (5, 2, 1))


def test_segment_attention_equals_the_block_diagonal_mask() -> None:
    """Grouped-query attention (4 query heads, 2 key/value heads), fp32: outputs and the
    gradients of query, key and value."""
    lengths = [3, 3, 5, 1, 2]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]  # [1, 14]
    mask = torch.ones_like(positions)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 14, 8, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 14, 8, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 14, 8, generator=g, requires_grad=True)
    weights = torch.randn(1, 14, 4, 8, generator=g)

    out = segment_attention(q, k, v, segment_runs(positions, mask), scaling=0.3)
    (out * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    allowed = packed_causal_mask(positions, mask)  # [1, 1, 14, 14]
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed, scale=0.3
    ).transpose(1, 2)
    (ref * weights).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for t, grad in zip((q, k, v), grads, strict=True):
        torch.testing.assert_close(grad, t.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one row of 14 tokens"):
        segment_attention(q[:, :, :10], k, v, segment_runs(positions, mask))


# ---------------------------------------------------------------------- the language actor
def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows of 7, 2, 12, 7 and 5 tokens and per-token loss weights."""
    lengths = [7, 2, 12, 7, 5]
    g = torch.Generator().manual_seed(1)
    mask = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    tokens = torch.randint(0, VOCAB, (5, 12), generator=g) * mask
    weights = torch.randn(5, 11, generator=g) * mask[:, 1:]
    return tokens, mask, weights


def _loss_and_grads(actor: ActorLanguage, packed: bool, **forward: Any) -> tuple[Any, ...]:
    tokens, mask, weights = _batch()
    actor.zero_grad()
    with forward_attention(tokens.device, torch.float32):
        if packed:
            out = packed_actor_forward(actor, tokens, mask, one_row=True, return_entropy=True)
        else:
            out = actor(tokens, mask, return_entropy=True)
    loss = (out.log_probs * weights).sum() + (out.entropy * weights).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in actor.named_parameters()}
    return out.log_probs.detach(), out.entropy.detach(), loss.detach(), grads


@pytest.fixture(scope="module")
def actor() -> ActorLanguage:
    """The ``SMALL`` model on SDPA, gradient checkpointing on."""
    model = build_tiny_model("5m", vocab_size=VOCAB, **SMALL)
    options = {"attn_implementation": "sdpa", "gradient_checkpointing": True}
    built = ActorLanguage.from_model(model, ActorLanguage.Config(**options))
    built.train()
    return built


def test_packed_sdpa_runs_per_sequence_and_equals_padded(
    actor: ActorLanguage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row, no mask: log-probs, entropies, loss and gradients equal the padded batch
    (fp32), under gradient checkpointing (the recomputed layers see the segments too)."""
    padded = _loss_and_grads(actor, packed=False)
    calls: list[SegmentRuns] = []

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(args[3])
        return segment_attention(*args, **kwargs)

    monkeypatch.setattr(varlen_attention, "segment_attention", spy)
    packed = _loss_and_grads(actor, packed=True)
    # 2 layers, forward and recomputation; lengths sorted 12, 7, 7, 5, 2 in one row
    assert len(calls) == 4
    assert calls[0] == SegmentRuns(((0, 1, 12), (12, 2, 7), (26, 1, 5), (31, 1, 2)), 33)
    for got, want in zip(packed[:3], padded[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, grad in padded[3].items():
        torch.testing.assert_close(packed[3][name], grad, rtol=1e-4, atol=1e-6)


def test_packed_sdpa_on_llama_equals_padded() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        intermediate_size=128,
        **{k: v for k, v in SMALL.items() if k != "intermediate_size"},
    )
    llama = ActorLanguage.from_model(
        LlamaForCausalLM(config), ActorLanguage.Config(attn_implementation="sdpa")
    )
    padded = _loss_and_grads(llama, packed=False)
    packed = _loss_and_grads(llama, packed=True)
    for got, want in zip(packed[:3], padded[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, grad in padded[3].items():
        torch.testing.assert_close(packed[3][name], grad, rtol=1e-4, atol=1e-6)


def test_a_model_whose_attention_skips_the_segments_is_refused(
    actor: ActorLanguage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attention that never reads ``packed_segments`` attends across sequences."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    varlen_attention.install()
    monkeypatch.setattr(varlen_attention, "_original_sdpa", varlen_attention._original_sdpa)
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", sdpa_attention_forward)
    monkeypatch.setattr(AttentionInterface, "register", lambda *_: None)  # install() no-op
    with pytest.raises(RuntimeError, match="did not read the packed sequences"):
        _loss_and_grads(actor, packed=True)


def test_packed_sdpa_under_bf16_autocast_matches_padded(actor: ActorLanguage) -> None:
    """bf16 autocast on the CPU (``forward_attention``: the math kernel): packed and padded
    agree within bf16 rounding, and the backward runs."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = _loss_and_grads(actor, packed=False)
        packed = _loss_and_grads(actor, packed=True)
    assert packed[0].dtype == torch.float32
    torch.testing.assert_close(packed[0], padded[0], rtol=0.05, atol=0.05)
    assert all(torch.isfinite(g).all() for g in packed[3].values())


def test_packed_model_inputs_on_sdpa_one_row_carry_the_segments() -> None:
    tokens, mask, _ = _batch()
    one_row = pack_padded_rows(tokens, mask, one_row=True)
    inputs = packed_model_inputs("sdpa", one_row, torch.float32)
    assert inputs["attention_mask"].tolist() == [[1] * 33]
    assert inputs["packed_segments"].width == 33
    several = packed_model_inputs("sdpa", pack_padded_rows(tokens, mask), torch.float32)
    assert several["attention_mask"].shape == (3, 1, 12, 12)  # rows of 12: the mask path


# ---------------------------------------------------------------------- trainer.packing
def test_packing_auto_packs_a_text_model_on_sdpa_only(actor: ActorLanguage) -> None:
    eager = ActorLanguage.from_model(
        build_tiny_model("5m", vocab_size=VOCAB, **SMALL),
        ActorLanguage.Config(attn_implementation="eager"),
    )
    media = cast(Actor, SimpleNamespace(modality=ActorModality.VISION_LANGUAGE))
    assert resolve_packing("auto", actor) is True
    assert resolve_packing("auto", eager) is False
    assert resolve_packing("auto", media) is False
    assert resolve_packing(False, actor) is False
    assert resolve_packing(True, eager) is True


def test_packing_option_reads_auto_true_and_false() -> None:
    assert load_config(None, []).trainer.packing == "auto"
    assert load_config(None, ["trainer.packing=true"]).trainer.packing is True
    assert load_config(None, ["trainer.packing=false"]).trainer.packing is False
    with pytest.raises(ConfigError, match=re.escape("bool | one of 'auto', got 'maybe'")):
        load_config(None, ["trainer.packing=maybe"])
