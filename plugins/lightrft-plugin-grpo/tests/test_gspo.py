"""GSPO and GSPO-token: the sequence ratio, its clipping, value and gradient -- by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightrft_core.algorithms import AGGREGATION_MODES
from lightrft_core.interfaces import AlgorithmContext, LossScale, PolicyLossInput
from lightrft_plugin_grpo.gspo import GSPO, GSPOToken
from lightrft_plugin_grpo.sequence_losses import (
    gspo_token_log_ratio,
    sequence_advantage,
    sequence_log_ratio,
)

# Two sequences (width 3): sequence 0 has 2 tokens with log-ratios 0.1, 0.3 (then padding),
# sequence 1 has 3 tokens with log-ratios -0.3, 0.0, -0.3. A_0 = 1, A_1 = -1.
#   log s_0 = (0.1 + 0.3) / 2 = 0.2          s_0 = e^0.2  = 1.2214027582
#   log s_1 = (-0.3 + 0 - 0.3) / 3 = -0.2    s_1 = e^-0.2 = 0.8187307531
DELTA = [[0.1, 0.3, 5.0], [-0.3, 0.0, -0.3]]  # 5.0 on the padding must be ignored
MASK = [[True, True, False], [True, True, True]]
S0, S1 = math.exp(0.2), math.exp(-0.2)


def _batch(**overrides: Any) -> PolicyLossInput:
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]])
    fields: dict[str, Any] = {
        "log_probs": (old + torch.tensor(DELTA)).requires_grad_(True),
        "old_log_probs": old,
        "advantages": torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]]),
        "action_mask": torch.tensor(MASK),
        "scale": LossScale(num_tokens=5, num_sequences=2),
    }
    fields.update(overrides)
    return PolicyLossInput(**fields)


def _loss_and_grad(algo: GSPO, **overrides: Any) -> tuple[float, torch.Tensor, dict[str, float]]:
    batch = _batch(**overrides)
    out = algo.policy_loss(batch)
    out.loss.backward()
    assert batch.log_probs.grad is not None
    return out.loss.item(), batch.log_probs.grad, {k: v.item() for k, v in out.metrics.items()}


def test_defaults_are_the_papers() -> None:
    cfg = GSPO.Config()
    assert (GSPO.name, GSPOToken.name) == ("gspo", "gspo_token")
    assert GSPO.requires_groups and GSPOToken.requires_groups
    assert (cfg.clip_eps_low, cfg.clip_eps_high) == (3e-4, 4e-4)
    assert cfg.loss_aggregation == "seq-mean-token-mean"
    assert cfg.kl_coef == 0.0
    assert GSPOToken.Config() == GSPOToken.Config(clip_eps_low=3e-4, clip_eps_high=4e-4)


def test_sequence_log_ratio_and_advantage() -> None:
    batch = _batch()
    log_s = sequence_log_ratio(batch.log_probs, batch.old_log_probs, batch.action_mask)
    torch.testing.assert_close(log_s, torch.tensor([0.2, -0.2]))
    adv = sequence_advantage(batch.advantages, batch.action_mask)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]))
    # A row without tokens: log s = 0, A = 0 (no NaN).
    empty = torch.zeros(1, 3, dtype=torch.bool)
    assert sequence_log_ratio(torch.ones(1, 3), torch.zeros(1, 3), empty).item() == 0.0
    assert sequence_advantage(torch.ones(1, 3), empty).item() == 0.0


def test_unclipped_value_and_gradient() -> None:
    # A wide clip (0.5) leaves both sequences unclipped: L_i = -A_i s_i.
    #   loss = (L_0 + L_1) / N_seq = (-1.2214027582 + 0.8187307531) / 2 = -0.2013360026
    # d L_i / d lp_t = -A_i s_i / n_i for each token of sequence i, and the batch loss
    # divides by N_seq = 2:
    #   sequence 0: -1 · 1.2214027582 / 2 / 2 = -0.3053506896 (both tokens)
    #   sequence 1: +1 · 0.8187307531 / 3 / 2 = +0.1364551255 (all three)
    loss, grad, metrics = _loss_and_grad(GSPO(GSPO.Config(clip_eps_low=0.5, clip_eps_high=0.5)))
    assert loss == pytest.approx(-0.2013360026, abs=1e-6)
    a, b = -S0 / 4, S1 / 6
    torch.testing.assert_close(grad, torch.tensor([[a, a, 0.0], [b, b, b]]))
    assert metrics["clip_fraction"] == 0.0
    # ratio_mean is token-weighted: (2·1.2214027582 + 3·0.8187307531) / 5 = 0.9797995552
    assert metrics["ratio_mean"] == pytest.approx(0.9797995552, abs=1e-6)


def test_clipping_is_per_sequence() -> None:
    # ε_low = 0.2, ε_high = 0.1: range [0.8, 1.1].
    #   sequence 0: A > 0, s_0 = 1.2214 > 1.1: clipped, L_0 = -1.1, no gradient;
    #   sequence 1: A < 0, s_1 = 0.8187 >= 0.8: unclipped, L_1 = +0.8187307531.
    #   loss = (-1.1 + 0.8187307531) / 2 = -0.1406346235; clip_fraction = 2 of 5 tokens.
    loss, grad, metrics = _loss_and_grad(GSPO(GSPO.Config(clip_eps_low=0.2, clip_eps_high=0.1)))
    assert loss == pytest.approx(-0.1406346235, abs=1e-6)
    b = S1 / 6
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0], [b, b, b]]))
    assert metrics["clip_fraction"] == pytest.approx(0.4)


def test_default_clip_range_is_tight() -> None:
    # ε = (3e-4, 4e-4): both sequences are clipped: L_0 = -1.0004, L_1 = +0.9997;
    # loss (-1.0004 + 0.9997) / 2 = -0.00035, no gradient at all.
    loss, grad, metrics = _loss_and_grad(GSPO())
    assert loss == pytest.approx(-0.00035, abs=1e-6)
    assert torch.equal(grad, torch.zeros(2, 3))
    assert metrics["clip_fraction"] == 1.0


def test_token_ratio_has_the_sequence_value_and_a_per_token_gradient() -> None:
    # log s_{i,t} = sg[log s_i] + lp_t - sg[lp_t]: value 0.2 on row 0, -0.2 on row 1;
    # d Σ w·log s / d lp = w token by token (not spread over the sequence as for log s_i).
    batch = _batch()
    log_ratio = gspo_token_log_ratio(batch.log_probs, batch.old_log_probs, batch.action_mask)
    torch.testing.assert_close(log_ratio.detach(), torch.tensor([[0.2] * 3, [-0.2] * 3]))
    weights = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    (log_ratio * weights).sum().backward()
    torch.testing.assert_close(batch.log_probs.grad, weights)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
@pytest.mark.parametrize("clip", [(0.5, 0.5), (0.2, 0.1), (3e-4, 4e-4), (0.1, 0.05)])
def test_gspo_token_equals_gspo_with_sequence_advantages(
    mode: str, clip: tuple[float, float]
) -> None:
    # With A_{i,t} = A_i both have the same value and gradient, clipped or not, in every
    # aggregation mode (hand case: the first two clip settings above).
    options = {"clip_eps_low": clip[0], "clip_eps_high": clip[1], "loss_aggregation": mode}
    gen = torch.Generator().manual_seed(0)
    b, t = 6, 5
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    old = -torch.rand(b, t, generator=gen) * 2
    delta = torch.randn(b, t, generator=gen) * 0.2
    adv = torch.where(mask, torch.randn(b, 1, generator=gen), 0.0)
    results = []
    for cls in (GSPO, GSPOToken):
        lp = (old + delta).requires_grad_(True)
        algo = cls(cls.Config(**options))
        algo.setup(AlgorithmContext(max_new_tokens=5))
        out = algo.policy_loss(PolicyLossInput(lp, old, adv, mask, LossScale(int(mask.sum()), b)))
        out.loss.backward()
        results.append((out.loss.detach(), lp.grad, out.metrics["clip_fraction"]))
    (loss_seq, grad_seq, clip_seq), (loss_tok, grad_tok, clip_tok) = results
    torch.testing.assert_close(loss_tok, loss_seq)
    torch.testing.assert_close(grad_tok, grad_seq)
    torch.testing.assert_close(clip_tok, clip_seq)


def test_gspo_token_takes_per_token_advantages() -> None:
    # Wide clip, sequence 0 only, per-token advantages [2, 0] instead of [1, 1]:
    # L_t = -A_t s_0 -> -2·1.2214027582 and 0; seq-mean-token-mean over 2 tokens and 2
    # sequences (sequence 1 has A = 0 here): (-2.4428055163 / 2) / 2 = -0.6107013791.
    # Gradient: token 0: -A_0 s_0 / 2 / 2 = -0.6107013791, token 1: 0.
    algo = GSPOToken(GSPOToken.Config(clip_eps_low=0.5, clip_eps_high=0.5))
    adv = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, grad, _ = _loss_and_grad(algo, advantages=adv)
    assert loss == pytest.approx(-0.6107013791, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-S0 / 2, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_dual_clip_acts_on_the_sequence_ratio() -> None:
    # Sequence 1 alone with A = -1 and log-ratios 1.5 each: s = e^1.5 = 4.4816890703;
    # c = 3: L = min(4.4817, 3) = 3 (dual-clipped, no gradient). Sequence 0 has A = 0.
    delta = torch.tensor([[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]])
    old = torch.zeros(2, 3)
    algo = GSPO(GSPO.Config(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=3.0))
    out = algo.policy_loss(
        _batch(
            log_probs=(old + delta).requires_grad_(True),
            old_log_probs=old,
            advantages=torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]),
        )
    )
    assert out.loss.item() == pytest.approx(3.0 / 2)
    assert out.metrics["dual_clip_fraction"].item() == pytest.approx(3 / 5)
