"""The SDPA kernel of the loop's forward (``actors.options.forward_attention``): the math
kernel for 16-bit on the CPU, the same log-probs and gradients within bf16 rounding."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from lightrft_core.actors import ActorLanguage
from lightrft_core.actors.options import forward_attention
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.trainer import micro_batches
from lightrft_core.trainer.micro_batches import actor_forward

CPU = torch.device("cpu")
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def _flash_allowed(context: object) -> bool:
    with context:  # type: ignore[attr-defined]
        return torch.backends.cuda.flash_sdp_enabled()


def test_math_kernel_only_for_16_bit_on_the_cpu() -> None:
    assert _flash_allowed(forward_attention(CPU, torch.float32))
    assert not _flash_allowed(forward_attention(CPU, torch.bfloat16))  # 16-bit weights
    with BF16:  # fp32 weights under bf16 autocast
        context = forward_attention(CPU, torch.float32)
    assert not _flash_allowed(context)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
        assert _flash_allowed(forward_attention(torch.device("cuda"), torch.bfloat16))


@pytest.fixture(scope="module")
def actor() -> ActorLanguage:
    model = build_tiny_model(
        "5m", vocab_size=len(build_byte_tokenizer()), hidden_size=64, num_hidden_layers=2
    )
    return ActorLanguage.from_model(model, ActorLanguage.Config(attn_implementation="sdpa"))


@pytest.mark.parametrize("packing", [False, True])
def test_bf16_log_probs_and_gradients_match_torchs_kernel(
    actor: ActorLanguage, packing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(0)
    sequences = torch.randint(0, 256, (6, 20), generator=g)
    mask = torch.ones_like(sequences)
    mask[:3, 14:] = 0  # right padding on half the rows

    def run(kernel: object) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(micro_batches, "forward_attention", kernel)
        actor.zero_grad()
        with BF16:
            log_probs = actor_forward(actor, actor, sequences, mask, packing=packing).log_probs
        log_probs.float().sum().backward()
        grad = torch.cat([p.grad.flatten() for p in actor.parameters()])
        return log_probs.detach().float(), grad

    math_lp, math_grad = run(forward_attention)
    torch_lp, torch_grad = run(lambda *_: nullcontext())
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    # within one bf16 rounding of a log-prob near -log(259) = -5.56: 5.56 * 2^-8 = 0.022
    assert (math_lp - torch_lp)[valid].abs().max() < 0.022
    assert (math_lp[~valid] == 0).all()
    cosine = torch.nn.functional.cosine_similarity(math_grad, torch_grad, dim=0)
    assert cosine > 0.999
