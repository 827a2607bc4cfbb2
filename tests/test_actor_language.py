"""The built-in ``language`` actor: log-prob arithmetic, packing, LoRA, checkpointing, dtype."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from lightrft_core.actors import (
    ActorLanguage,
    chunked_token_log_probs,
    find_lora_target_modules,
    pack_sequences,
    packed_causal_mask,
    unpack_per_token,
)
from lightrft_core.interfaces import Actor
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.testing import ActorConformance

VOCAB = len(build_byte_tokenizer())  # 259
PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return build_tiny_model("5m", vocab_size=VOCAB, seed=seed)


def tiny_actor(**options: object) -> ActorLanguage:
    return ActorLanguage.from_model(tiny_model(), ActorLanguage.Config(**options))


def naive_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def padded_batch(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, T]`` tokens and mask."""
    width = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        tokens[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return tokens, mask


def random_sequences(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]


# ---------------------------------------------------------------- chunked log-probs
@pytest.mark.parametrize("chunk_size", [1, 7, 30, 1000])
def test_chunked_log_probs_from_hidden_match_naive_values_and_gradients(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 16, generator=g, requires_grad=True)  # [N, H], N = B*T
    head = torch.nn.Linear(16, 50)
    targets = torch.randint(0, 50, (30,), generator=g)
    weights = torch.randn(30, generator=g)

    lp, ent = chunked_token_log_probs(
        hidden, targets, head, chunk_size=chunk_size, return_entropy=True
    )
    ((lp * weights).sum() + ent.sum()).backward()
    grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad, head.weight.grad, head.bias.grad = None, None, None

    logits = head(hidden)
    ref_lp, ref_ent = naive_log_probs(logits, targets), naive_entropy(logits)
    ((ref_lp * weights).sum() + ref_ent.sum()).backward()
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, ref_lp, atol=1e-5)
    assert torch.allclose(ent, ref_ent, atol=1e-5)
    for got, want in zip(grads, [hidden.grad, head.weight.grad, head.bias.grad], strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_chunked_log_probs_from_low_precision_logits_are_fp32() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 40, generator=g).to(torch.bfloat16)
    targets = torch.randint(0, 40, (12,), generator=g)
    with torch.no_grad():
        lp, ent = chunked_token_log_probs(logits, targets, chunk_size=5)
    assert ent is None
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, naive_log_probs(logits, targets), atol=1e-5)


# ---------------------------------------------------------------- actor forward
@pytest.mark.parametrize("chunk_size", [4, 4096])
def test_forward_matches_naive_log_softmax_with_padding(chunk_size: int) -> None:
    actor = tiny_actor(logprob_chunk_size=chunk_size)
    seqs = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(seqs)
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    with torch.no_grad():
        out = actor(seqs, mask, return_entropy=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = actor.model(input_ids=seqs, attention_mask=mask, position_ids=positions).logits
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    assert out.log_probs.shape == out.entropy.shape == (3, 9)
    ref_lp = naive_log_probs(logits[:, :-1], seqs[:, 1:])
    ref_ent = naive_entropy(logits[:, :-1])
    assert torch.allclose(out.log_probs[valid], ref_lp[valid], atol=1e-5)
    assert torch.allclose(out.entropy[valid], ref_ent[valid], atol=1e-5)
    assert (out.log_probs[~valid] == 0).all() and (out.entropy[~valid] == 0).all()


def test_forward_refuses_extra_inputs() -> None:
    actor = tiny_actor()
    seqs = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no extra inputs"):
        actor(seqs, torch.ones_like(seqs), pixel_values=torch.zeros(1))


# ---------------------------------------------------------------- packing
def test_pack_sequences_layout_and_errors() -> None:
    seqs = random_sequences([5, 9, 3, 7])
    packed = pack_sequences(seqs, max_tokens_per_row=12, pad_token_id=258)
    assert [(s.row, s.start, s.length) for s in packed.spans] == [
        (0, 0, 5),
        (1, 0, 9),
        (0, 5, 3),
        (2, 0, 7),
    ]
    assert packed.sequences.shape == (3, 9)
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0]
    assert packed.attention_mask[0].tolist() == [1] * 8 + [0]
    assert packed.sequences[0, 8] == 258
    assert torch.equal(packed.sequences[0, 5:8], seqs[2])
    assert pack_sequences(seqs).sequences.shape == (1, 24)
    with pytest.raises(ValueError, match="does not fit"):
        pack_sequences(seqs, max_tokens_per_row=8)


def test_packed_causal_mask_is_block_diagonal() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    allowed = packed_causal_mask(positions, mask)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # padding sees only itself
        ]
    )
    assert torch.equal(allowed, expected)
    additive = packed_causal_mask(positions, mask, dtype=torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected.bool())
    assert (additive[~expected.bool()] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_log_probs_equal_padded_batch(attn: str) -> None:
    actor = tiny_actor(attn_implementation=attn)
    seqs = random_sequences([5, 9, 3, 7, 4], seed=3)
    padded, mask = padded_batch(seqs)
    packed = pack_sequences(seqs, max_tokens_per_row=16)
    assert packed.sequences.shape[0] == 2  # two rows, the second one padded at the end
    with torch.no_grad():
        ref = actor(padded, mask, return_entropy=True)
        out = actor(
            packed.sequences,
            packed.attention_mask,
            position_ids=packed.position_ids,
            return_entropy=True,
        )
    lp = unpack_per_token(out.log_probs, packed.spans)
    ent = unpack_per_token(out.entropy, packed.spans)
    for i, s in enumerate(seqs):
        n = len(s) - 1
        assert torch.allclose(lp[i], ref.log_probs[i, :n], atol=1e-5), i
        assert torch.allclose(ent[i], ref.entropy[i, :n], atol=1e-5), i
    for span in packed.spans:  # the cross-sequence position is not scored
        end = span.start + span.length - 1
        if end < out.log_probs.shape[1]:
            assert out.log_probs[span.row, end] == 0


# ---------------------------------------------------------------- attention choice
def test_attention_choice_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lightrft.actor"):
        actor = tiny_actor()
    records = [r for r in caplog.records if r.name == "lightrft.actor"]
    assert len(records) == 1
    assert "sdpa" in records[0].getMessage()
    assert actor.base_model.config._attn_implementation == "sdpa"


def test_requested_flash_attention_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if torch.cuda.is_available():
        pytest.skip("falls back only where flash-attention cannot run")
    with caplog.at_level(logging.INFO, logger="lightrft.actor"):
        actor = tiny_actor(attn_implementation="flash_attention_2")
    records = [r for r in caplog.records if r.name == "lightrft.actor"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "flash_attention_2" in records[0].getMessage()
    assert actor.base_model.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------- LoRA
def test_lora_targets_every_projection_but_not_the_head() -> None:
    assert find_lora_target_modules(tiny_model()) == PROJECTIONS
    actor = tiny_actor(lora_rank=4)
    assert sorted(actor.model.peft_config["default"].target_modules) == PROJECTIONS
    trainable = [n for n, p in actor.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)


def test_lora_target_override() -> None:
    actor = tiny_actor(lora_rank=2, lora_target_modules=["q_proj", "v_proj"])
    trainable = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in actor.named_parameters()}
    assert {"q_proj", "v_proj"} <= trainable
    lora_params = [n for n, p in actor.named_parameters() if p.requires_grad]
    assert all(".q_proj." in n or ".v_proj." in n for n in lora_params)


def test_lora_weights_for_sync_are_merged_under_base_names() -> None:
    base_names = list(tiny_model().state_dict())
    actor = tiny_actor(lora_rank=4, lora_alpha=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    synced = dict(actor.named_weights_for_sync())
    assert list(synced) == base_names

    merged = copy.deepcopy(actor.model).merge_and_unload()
    expected = merged.state_dict()
    assert list(expected) == base_names
    for name in base_names:
        assert torch.allclose(synced[name], expected[name], atol=1e-6), name
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(synced[q], tiny_model().state_dict()[q])

    seqs = torch.randint(0, VOCAB, (2, 8), generator=g)
    mask = torch.ones_like(seqs)
    with torch.no_grad():
        lora_lp = actor(seqs, mask).log_probs
        merged_lp = ActorLanguage.from_model(merged)(seqs, mask).log_probs
    assert torch.allclose(lora_lp, merged_lp, atol=1e-5)


def test_weights_for_sync_without_lora_are_the_state_dict() -> None:
    actor = tiny_actor()
    synced = list(actor.named_weights_for_sync())
    state = actor.model.state_dict()
    assert [n for n, _ in synced] == list(state)
    assert all(torch.equal(t, state[n]) for n, t in synced)


# ---------------------------------------------------------------- checkpointing, dtype
def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    seqs = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(seqs)
    mask[1, 9:] = 0
    grads, calls = [], []
    for checkpointing in (False, True):
        actor = tiny_actor(gradient_checkpointing=checkpointing).train()
        layer_calls = [0]
        actor.base_model.model.layers[0].register_forward_pre_hook(
            lambda *_, c=layer_calls: c.__setitem__(0, c[0] + 1)
        )
        actor(seqs, mask).log_probs.sum().backward()
        grads.append({n: p.grad for n, p in actor.named_parameters()})
        calls.append(layer_calls[0])
    assert calls == [1, 2]  # the first layer ran again in the backward pass
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-5), name


def test_load_from_path_in_bfloat16(tmp_path: pytest.TempPathFactory) -> None:
    tiny_model().save_pretrained(tmp_path)
    seqs = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(seqs)
    fp32 = ActorLanguage(ActorLanguage.Config(path=str(tmp_path)))
    bf16 = ActorLanguage(ActorLanguage.Config(path=str(tmp_path), dtype="bfloat16"))
    assert fp32.model.dtype == torch.float32 and bf16.model.dtype == torch.bfloat16
    with torch.no_grad():
        ref = fp32(seqs, mask, return_entropy=True)
        out = bf16(seqs, mask, return_entropy=True)
    assert out.log_probs.dtype == out.entropy.dtype == torch.float32
    assert torch.allclose(out.log_probs, ref.log_probs, atol=0.05)
    assert torch.allclose(out.entropy, ref.entropy, atol=0.05)


def test_constructor_without_path_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"set model\.path"):
        ActorLanguage(ActorLanguage.Config())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "float64"}, "dtype"),
        ({"attn_implementation": "flash"}, "attn_implementation"),
        ({"lora_rank": -1}, "lora_rank"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_target_modules": []}, "lora_target_modules"),
        ({"logprob_chunk_size": 0}, "logprob_chunk_size"),
    ],
)
def test_config_refuses_bad_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActorLanguage.Config(**options)


# ---------------------------------------------------------------- conformance
class TestActorLanguageConformance(ActorConformance):
    actor_cls = ActorLanguage
    vocab_size = VOCAB

    def make_actor(self) -> Actor:
        return ActorLanguage.from_model(tiny_model())
