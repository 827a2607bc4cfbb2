"""GAE, token rewards and the PPO advantages, checked against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.algorithms.token_rewards import last_token_mask, token_level_rewards
from lightrft_core.interfaces import AdvantageInput
from lightrft_plugin_ppo.gae import gae_advantages
from lightrft_plugin_ppo.ppo import PPO

JUNK = 7.0  # values at masked positions: must never be read

# Two right-padded samples, 6 per-token positions each.
#   sample 0: prompt at t=0, response t=1..3, padding t=4..5; outcome reward r = 1.0
#   sample 1: prompt at t=0..1, response t=2..5 (no padding);  outcome reward r = 2.0
MASK = torch.tensor(
    [
        [False, True, True, True, False, False],
        [False, False, True, True, True, True],
    ]
)
REWARDS = torch.tensor([1.0, 2.0])
VALUES = torch.tensor(
    [
        [JUNK, 0.5, 0.4, 0.2, JUNK, JUNK],
        [JUNK, JUNK, 1.0, 0.0, -0.5, 1.5],
    ]
)
# k1 KL, kl_t = lp_old − lp_ref:  sample 0: 0.5, −0.2, 0.0;  sample 1: 0.0, 1.0, 0.0, −1.0
OLD = torch.tensor(
    [
        [-9.0, -1.0, -1.2, -0.5, -9.0, -9.0],
        [-9.0, -9.0, -1.0, -0.5, -2.0, -1.0],
    ]
)
REF = torch.tensor(
    [
        [-3.0, -1.5, -1.0, -0.5, -3.0, -3.0],
        [-3.0, -3.0, -1.0, -1.5, -2.0, 0.0],
    ]
)
GAMMA, LAM, BETA = 0.9, 0.5, 0.1  # γλ = 0.45

# Token rewards R_t = −β·kl_t + r·[t is last]:
#   sample 0: R1 = −0.1·0.5 = −0.05, R2 = −0.1·(−0.2) = 0.02, R3 = −0.1·0 + 1.0 = 1.0
#   sample 1: R2 = 0, R3 = −0.1·1.0 = −0.1, R4 = 0, R5 = −0.1·(−1.0) + 2.0 = 2.1
TOKEN_REWARDS = torch.tensor(
    [
        [0.0, -0.05, 0.02, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, -0.1, 0.0, 2.1],
    ]
)
# δ_t = R_t + γ·V_{t+1} − V_t (V after the last token = 0), A_t = δ_t + γλ·A_{t+1}:
#   sample 0: δ3 = 1.0 + 0 − 0.2 = 0.8                    A3 = 0.8
#             δ2 = 0.02 + 0.9·0.2 − 0.4 = −0.2            A2 = −0.2 + 0.45·0.8 = 0.16
#             δ1 = −0.05 + 0.9·0.4 − 0.5 = −0.19          A1 = −0.19 + 0.45·0.16 = −0.118
#   sample 1: δ5 = 2.1 + 0 − 1.5 = 0.6                    A5 = 0.6
#             δ4 = 0 + 0.9·1.5 − (−0.5) = 1.85            A4 = 1.85 + 0.45·0.6 = 2.12
#             δ3 = −0.1 + 0.9·(−0.5) − 0 = −0.55          A3 = −0.55 + 0.45·2.12 = 0.404
#             δ2 = 0 + 0.9·0 − 1.0 = −1.0                 A2 = −1.0 + 0.45·0.404 = −0.8182
ADVANTAGES = torch.tensor(
    [
        [0.0, -0.118, 0.16, 0.8, 0.0, 0.0],
        [0.0, 0.0, -0.8182, 0.404, 2.12, 0.6],
    ]
)
# Returns G_t = A_t + V_t:
#   sample 0: −0.118 + 0.5 = 0.382, 0.16 + 0.4 = 0.56, 0.8 + 0.2 = 1.0
#   sample 1: −0.8182 + 1.0 = 0.1818, 0.404 + 0 = 0.404, 2.12 − 0.5 = 1.62, 0.6 + 1.5 = 2.1
RETURNS = torch.tensor(
    [
        [0.0, 0.382, 0.56, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.1818, 0.404, 1.62, 2.1],
    ]
)


def _kl() -> torch.Tensor:
    return OLD - REF


def test_last_token_mask() -> None:
    assert last_token_mask(MASK).nonzero().tolist() == [[0, 3], [1, 5]]
    assert not last_token_mask(torch.zeros(1, 3, dtype=torch.bool)).any()


def test_token_rewards_carry_the_kl_penalty_and_the_outcome_on_the_last_token() -> None:
    rewards = token_level_rewards(REWARDS, MASK, kl=_kl(), kl_coef=BETA)
    torch.testing.assert_close(rewards, TOKEN_REWARDS)
    # without a penalty only the last token is rewarded
    plain = token_level_rewards(REWARDS, MASK)
    assert plain.nonzero().tolist() == [[0, 3], [1, 5]]


def test_gae_golden_values_and_returns() -> None:
    out = gae_advantages(TOKEN_REWARDS, VALUES, MASK, gamma=GAMMA, lam=LAM)
    torch.testing.assert_close(out.advantages, ADVANTAGES)
    torch.testing.assert_close(out.returns, RETURNS)
    # returns = A + V on the response tokens, 0 elsewhere
    torch.testing.assert_close(out.returns, torch.where(MASK, ADVANTAGES + VALUES, 0.0))


def test_lambda_one_is_monte_carlo_and_lambda_zero_is_one_step_td() -> None:
    # One response of 3 tokens, R = (0, 0, 1), V = (0.2, 0.4, 0.6), γ = 0.5.
    mask = torch.ones(1, 3, dtype=torch.bool)
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 0.6]])
    # λ = 1: A_t = Σ_k γ^{k−t} R_k − V_t: (0.25 − 0.2, 0.5 − 0.4, 1 − 0.6) = (0.05, 0.1, 0.4)
    mc = gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
    torch.testing.assert_close(mc.advantages, torch.tensor([[0.05, 0.1, 0.4]]))
    torch.testing.assert_close(mc.returns, torch.tensor([[0.25, 0.5, 1.0]]))
    # λ = 0: A_t = δ_t = (0 + 0.5·0.4 − 0.2, 0 + 0.5·0.6 − 0.4, 1 − 0.6) = (0, −0.1, 0.4)
    td = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.0)
    torch.testing.assert_close(td.advantages, torch.tensor([[0.0, -0.1, 0.4]]))


def test_a_masked_gap_inside_a_response_is_not_a_step() -> None:
    # Tokens at t=0 and t=2 (t=1 masked): the same as the contiguous response of 2 tokens.
    gap = gae_advantages(
        torch.tensor([[0.0, 5.0, 1.0]]),
        torch.tensor([[0.3, JUNK, 0.6]]),
        torch.tensor([[True, False, True]]),
        gamma=0.9,
        lam=0.5,
    )
    contiguous = gae_advantages(
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0.3, 0.6]]),
        torch.ones(1, 2, dtype=torch.bool),
        gamma=0.9,
        lam=0.5,
    )
    # δ1 = 1 − 0.6 = 0.4 = A1; δ0 = 0.9·0.6 − 0.3 = 0.24, A0 = 0.24 + 0.45·0.4 = 0.42
    torch.testing.assert_close(contiguous.advantages, torch.tensor([[0.42, 0.4]]))
    torch.testing.assert_close(gap.advantages, torch.tensor([[0.42, 0.0, 0.4]]))


@pytest.mark.parametrize(("gamma", "lam"), [(1.5, 0.5), (0.9, -0.1)])
def test_bad_discounts_are_refused(gamma: float, lam: float) -> None:
    with pytest.raises(ValueError, match="must be in"):
        gae_advantages(TOKEN_REWARDS, VALUES, MASK, gamma=gamma, lam=lam)


def _ppo_advantages(**options: object):  # type: ignore[no-untyped-def]
    algo = PPO(PPO.Config(gamma=GAMMA, lam=LAM, kl_coef=BETA, **options))  # type: ignore[arg-type]
    return algo.compute_advantages(
        AdvantageInput(
            rewards=REWARDS,
            action_mask=MASK,
            group_size=1,
            old_log_probs=OLD,
            ref_log_probs=REF,
            values=VALUES,
        )
    )


def test_ppo_compute_advantages_without_whitening_is_the_golden_gae() -> None:
    out = _ppo_advantages(whiten_advantages=False)
    torch.testing.assert_close(out.advantages, ADVANTAGES)
    assert out.returns is not None
    torch.testing.assert_close(out.returns, RETURNS)
    # Σ_t kl_t per sample: 0.3 and 0.0 -> mean 0.15; the penalty is β times that
    assert out.metrics["kl_sequence_mean"] == pytest.approx(0.15)
    assert out.metrics["kl_penalty_mean"] == pytest.approx(0.015)


def test_ppo_whitens_the_advantages_but_not_the_returns() -> None:
    out = _ppo_advantages()
    valid = out.advantages[MASK]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # the whitening is an affine map of the raw GAE advantages
    raw = ADVANTAGES[MASK]
    expected = (raw - raw.mean()) / raw.std(correction=0)
    torch.testing.assert_close(valid, expected, atol=1e-5, rtol=1e-5)
    assert (out.advantages[~MASK] == 0).all()
    assert out.returns is not None
    torch.testing.assert_close(out.returns, RETURNS)


def test_ppo_needs_values() -> None:
    algo = PPO(PPO.Config())
    with pytest.raises(ValueError, match="AdvantageInput.values"):
        algo.compute_advantages(AdvantageInput(rewards=REWARDS, action_mask=MASK, group_size=1))
