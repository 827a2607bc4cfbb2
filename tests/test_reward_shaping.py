"""Reward running normalisation and clipping; advantage whitening and clipping.

Every expected number is worked out by hand in the comments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from lightrft_core.algorithms import (
    RewardNormalizer,
    RunningMeanStd,
    clip_advantages,
    clip_rewards,
    masked_whiten,
    normalize_rewards,
)
from lightrft_core.testing.training import ThreadGroup  # a 2-rank stand-in in threads


# ---------------------------------------------------------------------- running statistics
def test_running_statistics_over_several_batches_equal_the_formula() -> None:
    stats = RunningMeanStd()
    stats.update(torch.tensor([1.0, 2.0, 3.0]))
    # [1, 2, 3]: n 3, mean 2, M2 = 1 + 0 + 1 = 2, var 2/3
    assert (stats.count, stats.mean, stats.m2) == (3, 2.0, 2.0)
    assert stats.var == pytest.approx(2 / 3)
    stats.update(torch.tensor([[4.0], [5.0]]))  # any shape is flattened
    # + [4, 5] (mean 4.5, M2 0.5): δ = 2.5, mean = 2 + 2.5·2/5 = 3,
    # M2 = 2 + 0.5 + 2.5²·3·2/5 = 10 (= Σ (x - 3)² over 1..5 = 4+1+0+1+4)
    assert (stats.count, stats.mean) == (5, 3.0)
    assert stats.m2 == pytest.approx(10.0)
    stats.update(torch.tensor([10.0]))
    # + [10]: δ = 7, mean = 3 + 7/6 = 25/6, M2 = 10 + 7²·5·1/6 = 305/6
    # check: Σx² = 155, 6·(25/6)² = 625/6, 155 - 625/6 = 305/6; var 305/36, std 2.9107082
    assert stats.count == 6
    assert stats.mean == pytest.approx(25 / 6, abs=1e-12)
    assert stats.var == pytest.approx(305 / 36, abs=1e-12)
    assert stats.std == pytest.approx(2.9107082, abs=1e-7)
    # (10 - 25/6) / (2.9107082 + 1e-8) = 5.8333333 / 2.9107082 = 2.0040941
    out = normalize_rewards(torch.tensor([10.0, 25 / 6]), stats)
    torch.testing.assert_close(out, torch.tensor([2.0040941, 0.0]), atol=1e-6, rtol=0)
    # without centring: 10 / 2.9107082 = 3.4355902
    out = normalize_rewards(torch.tensor([10.0]), stats, center=False)
    assert out.item() == pytest.approx(3.4355902, abs=1e-6)
    # An empty batch changes nothing.
    stats.update(torch.tensor([]))
    assert stats.count == 6


def test_running_statistics_state_dict_round_trip() -> None:
    a = RunningMeanStd()
    a.update(torch.tensor([0.5, -1.0, 2.0]))
    b = RunningMeanStd()
    b.load_state_dict(a.state_dict())
    a.update(torch.tensor([3.0]))
    b.update(torch.tensor([3.0]))
    assert (a.count, a.mean, a.m2) == (b.count, b.mean, b.m2)


def test_running_statistics_refuse_non_finite_values() -> None:
    with pytest.raises(ValueError, match="finite"):
        RunningMeanStd().update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        normalize_rewards(torch.tensor([1.0]), RunningMeanStd())


def test_running_statistics_on_2_ranks_are_global() -> None:
    # Rank 0 sees [1, 2, 3], rank 1 sees [4, 5, 10] in one step: both must hold the
    # statistics of all six values (mean 25/6, var 305/36, from the test above).
    group = ThreadGroup(2)
    halves = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 10.0])]

    def rank(values: torch.Tensor) -> Callable[..., object]:
        def fn(all_reduce: Callable[..., torch.Tensor]) -> object:
            stats = RunningMeanStd()
            stats.update(values, all_reduce=all_reduce)
            return stats

        return fn

    for stats in group.run([rank(h) for h in halves]):
        assert isinstance(stats, RunningMeanStd)
        assert stats.count == 6
        assert stats.mean == pytest.approx(25 / 6, abs=1e-12)
        assert stats.var == pytest.approx(305 / 36, abs=1e-12)


def test_reward_clipping() -> None:
    # clamp to [-1.5, 1.5]
    out = clip_rewards(torch.tensor([-3.0, -1.5, 0.2, 1.6, 9.0]), 1.5)
    torch.testing.assert_close(out, torch.tensor([-1.5, -1.5, 0.2, 1.5, 1.5]))
    same = torch.tensor([7.0])
    assert clip_rewards(same, None) is same
    with pytest.raises(ValueError, match="reward clip must be > 0"):
        clip_rewards(same, 0.0)


def test_reward_normalizer_normalises_then_clips_and_checkpoints() -> None:
    norm = RewardNormalizer(clip=1.0)
    # batch [0, 4]: mean 2, std 2 -> [-1, 1] (within the clip)
    torch.testing.assert_close(norm(torch.tensor([0.0, 4.0])), torch.tensor([-1.0, 1.0]))
    # + [8]: all of [0, 4, 8]: mean 4, var (16 + 0 + 16)/3 = 32/3, std 3.2659863;
    # (8 - 4)/3.2659863 = 1.2247449 -> clipped to 1.0
    assert norm(torch.tensor([8.0])).item() == pytest.approx(1.0)
    resumed = RewardNormalizer(clip=1.0)
    resumed.load_state_dict(norm.state_dict())
    assert resumed.stats.count == 3 and resumed.stats.mean == pytest.approx(4.0)
    # Without normalisation only the clip applies, and no statistics are gathered.
    plain = RewardNormalizer(normalize=False, clip=2.0)
    torch.testing.assert_close(plain(torch.tensor([3.0, -0.5])), torch.tensor([2.0, -0.5]))
    assert plain.stats.count == 0


# ---------------------------------------------------------------------- whitening
VALUES = torch.tensor([[1.0, 2.0, 9.0], [3.0, 7.0, 7.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_masked_whitening_by_hand() -> None:
    # Valid values 1, 2, 3: mean 2, population var (1 + 0 + 1)/3 = 2/3, std 0.8164966.
    # (x - 2)/0.8164966: -1.2247449, 0, 1.2247449; masked entries are 0.
    out = masked_whiten(VALUES, MASK)
    expected = torch.tensor([[-1.2247449, 0.0, 0.0], [1.2247449, 0.0, 0.0]])
    torch.testing.assert_close(out.values, expected, atol=1e-6, rtol=0)
    assert out.mean == pytest.approx(2.0)
    assert out.std == pytest.approx(math.sqrt(2 / 3))
    assert out.count == 3
    # center=False: x / 0.8164966 = 1.2247449, 2.4494897, 3.6742346
    out = masked_whiten(VALUES, MASK, center=False)
    expected = torch.tensor([[1.2247449, 2.4494897, 0.0], [3.6742346, 0.0, 0.0]])
    torch.testing.assert_close(out.values, expected, atol=1e-6, rtol=0)


def test_whitening_without_spread_gives_zero_not_noise() -> None:
    # 0.7 is not exact in binary: Σx/N may differ from 0.7 by a rounding residue; dividing
    # that by a tiny std would give noise. Equal values must give exactly 0 (or stay as they
    # are without centring).
    values = torch.full((5, 7), 0.7)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) > 0.3
    out = masked_whiten(values, mask)
    assert torch.equal(out.values, torch.zeros(5, 7))
    assert out.std == 0.0
    kept = masked_whiten(values, mask, center=False).values
    assert torch.equal(kept, torch.where(mask, values, 0.0))
    # No valid token at all: zeros, count 0, no NaN.
    empty = masked_whiten(values, torch.zeros(5, 7, dtype=torch.bool))
    assert torch.equal(empty.values, torch.zeros(5, 7)) and empty.count == 0


def test_whitening_on_2_ranks_equals_whitening_the_whole_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(6, 5, generator=gen) * 3 + 1
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 0, 4, 1, 3])[:, None]
    whole = masked_whiten(values, mask)
    group = ThreadGroup(2)
    halves = [slice(0, 2), slice(2, 6)]  # uneven shards, one row without valid tokens

    def rank(rows: slice) -> Callable[..., object]:
        return lambda all_reduce: masked_whiten(values[rows], mask[rows], all_reduce=all_reduce)

    results = group.run([rank(r) for r in halves])
    joined = torch.cat([r.values for r in results])  # type: ignore[attr-defined]
    torch.testing.assert_close(joined, whole.values, atol=1e-6, rtol=0)
    for r in results:
        assert r.mean == pytest.approx(whole.mean) and r.std == pytest.approx(whole.std)  # type: ignore[attr-defined]
    # A rank whose shard has no valid token still takes part and gets zeros.
    lonely = group.run(
        [
            lambda ar: masked_whiten(values[:1], mask[:1], all_reduce=ar),
            lambda ar: masked_whiten(values[2:3], mask[2:3], all_reduce=ar),
        ]
    )
    assert torch.equal(lonely[1].values, torch.zeros(1, 5))  # type: ignore[attr-defined]


def test_whitening_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        masked_whiten(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="eps"):
        masked_whiten(torch.zeros(2), torch.ones(2, dtype=torch.bool), eps=-1.0)


def test_advantage_clipping() -> None:
    out = clip_advantages(torch.tensor([[-5.0, 0.3, 2.5]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[-2.0, 0.3, 2.0]]))
    same = torch.tensor([9.0])
    assert clip_advantages(same, None) is same
    with pytest.raises(ValueError, match="advantage clip must be > 0"):
        clip_advantages(same, -1.0)
