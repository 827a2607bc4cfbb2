"""REINFORCE++ and REINFORCE++-baseline advantages, worked out by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightrft_core.interfaces import AdvantageInput, AlgorithmContext
from lightrft_core.testing.training import ThreadGroup
from lightrft_plugin_reinforce.reinforce_pp import ReinforcePP, ReinforcePPBaseline

# Rollout of the returns test: row 0 = prompt token then 3 response tokens, row 1 = 2
# response tokens then padding. k1 KL = lp_old - lp_ref: [·, 0.2, -0.4, 0.6] and [1, -1].
MASK = torch.tensor([[False, True, True, True], [True, True, False, False]])
OLD = torch.tensor([[-1.0, -2.0, -0.5, -1.5], [-0.3, -0.7, -2.0, -2.0]])
REF = OLD - torch.tensor([[9.0, 0.2, -0.4, 0.6], [1.0, -1.0, 5.0, 5.0]])


def _advantages(algo: Any, rewards: list[float], group_size: int = 1, **kw: Any) -> Any:
    batch = AdvantageInput(
        rewards=torch.tensor(rewards),
        action_mask=kw.pop("mask", MASK),
        group_size=group_size,
        old_log_probs=kw.pop("old", OLD),
        ref_log_probs=kw.pop("ref", REF),
        **kw,  # e.g. kl_coef
    )
    return algo.compute_advantages(batch)


def test_returns_with_discount_kl_and_global_whitening() -> None:
    # γ = 0.5, β = 0.1, k1, rewards [1, 0]. From the returns test: the valid returns are
    #   row 0: 0.235, 0.51, 0.94      row 1: -0.05, 0.1
    # μ = (0.235 + 0.51 + 0.94 - 0.05 + 0.1) / 5 = 1.735 / 5 = 0.347
    # deviations -0.112, 0.163, 0.593, -0.397, -0.247; squares 0.012544, 0.026569, 0.351649,
    # 0.157609, 0.061009, sum 0.60938; σ² = 0.121876, σ = 0.3491074
    # A = dev / σ: -0.320818, 0.466905, 1.698618, -1.137186, -0.707519
    algo = ReinforcePP(ReinforcePP.Config(gamma=0.5, kl_coef=0.1, kl_estimator="k1"))
    assert algo.needs_reference()
    out = _advantages(algo, [1.0, 0.0])
    expected = torch.tensor(
        [[0.0, -0.320818, 0.466905, 1.698618], [-1.137186, -0.707519, 0.0, 0.0]]
    )
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)
    assert out.metrics["return_mean"] == pytest.approx(0.347, abs=1e-7)
    assert out.metrics["return_std"] == pytest.approx(0.3491074, abs=1e-7)
    assert out.metrics["advantage_mean"] == pytest.approx(0.0, abs=1e-6)
    # Σ_t kl per sequence: 0.2 - 0.4 + 0.6 = 0.4 and 1 - 1 = 0 -> mean 0.2; β·that = 0.02
    assert out.metrics["kl_sequence_mean"] == pytest.approx(0.2, abs=1e-6)
    assert out.metrics["kl_penalty_mean"] == pytest.approx(0.02, abs=1e-7)
    assert out.metrics["reward_mean"] == pytest.approx(0.5)


def test_without_kl_and_with_gamma_one_every_token_gets_the_whitened_reward() -> None:
    # β = 0, γ = 1: returns are the outcome on every response token: 1, 1, 1 | 0, 0.
    # μ = 3/5 = 0.6; σ² = (3·0.16 + 2·0.36)/5 = 1.2/5 = 0.24, σ = 0.4898979
    # A = 0.4/0.4898979 = 0.8164966 and -0.6/0.4898979 = -1.2247449
    algo = ReinforcePP()
    assert not algo.needs_reference()
    out = _advantages(algo, [1.0, 0.0], old=None, ref=None)
    a, b = 0.8164966, -1.2247449
    torch.testing.assert_close(
        out.advantages, torch.tensor([[0.0, a, a, a], [b, b, 0.0, 0.0]]), atol=1e-6, rtol=0
    )
    assert "kl_penalty_mean" not in out.metrics


def test_advantage_clip_applies_after_whitening() -> None:
    # The A above, clamped to [-1, 1]: 0.8164966 stays, -1.2247449 -> -1.
    algo = ReinforcePP(ReinforcePP.Config(advantage_clip=1.0))
    out = _advantages(algo, [1.0, 0.0], old=None, ref=None)
    torch.testing.assert_close(out.advantages[1, :2], torch.tensor([-1.0, -1.0]))
    assert out.advantages[0, 1].item() == pytest.approx(0.8164966, abs=1e-6)


def test_equal_returns_give_zero_not_nan() -> None:
    # Every reward 0.7, no KL: every valid return is 0.7 -> exactly 0 after whitening.
    out = _advantages(ReinforcePP(), [0.7, 0.7], old=None, ref=None)
    assert torch.equal(out.advantages, torch.zeros(2, 4))


def test_kl_in_reward_needs_log_probs() -> None:
    with pytest.raises(ValueError, match="ref_log_probs"):
        _advantages(ReinforcePP(ReinforcePP.Config(kl_coef=0.1)), [1.0, 0.0], ref=None)


# ---------------------------------------------------------------------- baseline variant
BASELINE_MASK = torch.tensor([[True, True], [True, False], [True, True], [True, False]])


def test_baseline_variant_by_hand() -> None:
    # Groups of 2: [1, 0] and [0.5, 0.5]; β = 0, γ = 1.
    # r - mean_G r = [0.5, -0.5 | 0, 0] -> returns on the valid tokens:
    #   row 0: 0.5, 0.5   row 1: -0.5   row 2: 0, 0   row 3: 0
    # μ = 0.5/6 = 0.0833333; σ² = (2·0.4166667² + 0.5833333² + 3·0.0833333²)/6
    #   = (0.3472222 + 0.3402778 + 0.0208333)/6 = 0.1180556, σ = 0.3435921
    # Default (no re-centring): A = G/σ: ±0.5/0.3435921 = ±1.4552138; the equal group stays 0.
    algo = ReinforcePPBaseline()
    out = _advantages(algo, [1.0, 0.0, 0.5, 0.5], group_size=2, mask=BASELINE_MASK)
    a = 1.4552138
    expected = torch.tensor([[a, a], [-a, 0.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)
    assert out.metrics["zero_std_group_fraction"] == 0.5
    # whiten_center: the paper's (G - μ)/σ: 0.4166667/σ = 1.2126781, -0.5833333/σ = -1.6977494,
    # and the equal group gets -0.0833333/σ = -0.2425356 (not zero: why it is not the default).
    algo = ReinforcePPBaseline(ReinforcePPBaseline.Config(whiten_center=True))
    out = _advantages(algo, [1.0, 0.0, 0.5, 0.5], group_size=2, mask=BASELINE_MASK)
    p, n, z = 1.2126781, -1.6977494, -0.2425356
    expected = torch.tensor([[p, p], [n, 0.0], [z, z], [z, 0.0]])
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)


def test_baseline_variant_with_kl_and_discount() -> None:
    # Group of 2, rewards [1, 0] -> centred [0.5, -0.5]; γ = 0.5, β = 0.1 with k1 KL
    # (the rollout of the first test): R row 0 = [0, -0.02, 0.04, -0.06 + 0.5 = 0.44],
    # row 1 = [-0.1, 0.1 - 0.5 = -0.4, 0, 0].
    # Returns: row 0: G_3 = 0.44, G_2 = 0.04 + 0.22 = 0.26, G_1 = -0.02 + 0.13 = 0.11;
    #          row 1: G_1 = -0.4, G_0 = -0.1 - 0.2 = -0.3.
    # μ = (0.11 + 0.26 + 0.44 - 0.3 - 0.4)/5 = 0.11/5 = 0.022
    # Σ (G - μ)² = 0.088² + 0.238² + 0.418² + 0.322² + 0.422²
    #            = 0.007744 + 0.056644 + 0.174724 + 0.103684 + 0.178084 = 0.52088
    # σ = sqrt(0.52088/5) = sqrt(0.104176) = 0.3227631; no re-centring: A = G/σ
    #   0.11/σ = 0.3408073, 0.26/σ = 0.8055444, 0.44/σ = 1.3632291, -0.3/σ = -0.9294744,
    #   -0.4/σ = -1.2392992
    algo = ReinforcePPBaseline(ReinforcePPBaseline.Config(gamma=0.5, kl_coef=0.1))
    out = _advantages(algo, [1.0, 0.0], group_size=2)
    expected = torch.tensor(
        [[0.0, 0.3408073, 0.8055444, 1.3632291], [-0.9294744, -1.2392992, 0.0, 0.0]]
    )
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)


def test_baseline_equal_reward_groups_give_zero_not_nan() -> None:
    out = _advantages(ReinforcePPBaseline(), [0.3, 0.3, 0.3, 0.3], group_size=2, mask=BASELINE_MASK)
    assert torch.equal(out.advantages, torch.zeros(4, 2))
    assert out.metrics["zero_std_group_fraction"] == 1.0


def test_baseline_refuses_group_size_one() -> None:
    with pytest.raises(ValueError, match="group_size >= 2"):
        _advantages(ReinforcePPBaseline(), [1.0, 0.0], group_size=1, old=None, ref=None)


# ---------------------------------------------------------------------- global whitening
@pytest.mark.parametrize("cls", [ReinforcePP, ReinforcePPBaseline])
def test_whitening_on_2_ranks_uses_the_global_batch(cls: Any) -> None:
    # 8 samples (4 groups of 2) with different lengths; rank 0 holds groups 0-1, rank 1 groups
    # 2-3. With the loop's all_reduce each rank's advantages equal the one-process result.
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(8, generator=gen)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 3, 5, 1, 4, 6, 2])[:, None]
    old = -torch.rand(8, 6, generator=gen)
    ref = old - 0.2 * torch.randn(8, 6, generator=gen)

    def advantages(rows: slice, all_reduce: Any = None) -> torch.Tensor:
        algo = cls(cls.Config(gamma=0.9, kl_coef=0.05))
        world_size = 1 if all_reduce is None else 2
        algo.setup(AlgorithmContext(world_size=world_size, all_reduce=all_reduce))
        batch = AdvantageInput(rewards[rows], mask[rows], 2, old[rows], ref[rows])
        return algo.compute_advantages(batch).advantages

    whole = advantages(slice(0, 8))
    halves = [slice(0, 4), slice(4, 8)]
    per_rank = ThreadGroup(2).run([lambda ar, r=r: advantages(r, ar) for r in halves])
    torch.testing.assert_close(torch.cat(per_rank), whole, atol=1e-6, rtol=0)
    # Without the collective each rank would whiten only its shard: a different result.
    local = torch.cat([advantages(r) for r in halves])
    assert not torch.allclose(local, whole, atol=1e-3)
