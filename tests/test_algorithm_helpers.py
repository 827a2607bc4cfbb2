"""Hand-checked numbers for ``lightrft_core.algorithms``: loss aggregation and KL estimators."""

from __future__ import annotations

import math

import pytest
import torch

from lightrft_core.algorithms import (
    AGGREGATION_MODES,
    KL_ESTIMATORS,
    aggregate_loss,
    kl_estimate,
    masked_mean,
)
from lightrft_core.interfaces import LossScale

# ---------------------------------------------------------------------- aggregation
# per_token [[1, 2, 3], [4, 5, 6]] with mask [[T, T, F], [T, F, F]]:
#   valid tokens 1, 2 | 4  -> 3 tokens, 2 sequences; sequence sums 3 and 4, lengths 2 and 1.
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])
SCALE = LossScale(num_tokens=3, num_sequences=2)

HAND_VALUES = {
    # (1 + 2 + 4) / 3
    "token-mean": 7.0 / 3.0,
    # ((1 + 2) / 2 + 4 / 1) / 2 = (1.5 + 4) / 2
    "seq-mean-token-mean": 2.75,
    # (3 + 4) / 2
    "seq-mean-token-sum": 3.5,
    # (3 / 4 + 4 / 4) / 2 with max_tokens = 4
    "seq-mean-token-sum-norm": 0.875,
}


def test_modes_are_the_documented_four() -> None:
    assert set(AGGREGATION_MODES) == set(HAND_VALUES)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregation_hand_values(mode: str) -> None:
    loss = aggregate_loss(PER_TOKEN, MASK, mode, SCALE, max_tokens=4)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(HAND_VALUES[mode], abs=1e-6)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregation_multiplies_by_world_size(mode: str) -> None:
    scale = LossScale(num_tokens=3, num_sequences=2, world_size=2)
    loss = aggregate_loss(PER_TOKEN, MASK, mode, scale, max_tokens=4)
    assert loss.item() == pytest.approx(2 * HAND_VALUES[mode], abs=1e-6)


def test_aggregation_divides_by_the_batch_not_the_micro_batch() -> None:
    # This micro-batch is one part of a batch of 7 tokens and 4 sequences:
    # token-mean 7 / 7 = 1; seq-mean-token-sum (3 + 4) / 4 = 1.75.
    scale = LossScale(num_tokens=7, num_sequences=4)
    assert aggregate_loss(PER_TOKEN, MASK, "token-mean", scale).item() == pytest.approx(1.0)
    assert aggregate_loss(PER_TOKEN, MASK, "seq-mean-token-sum", scale).item() == pytest.approx(
        1.75
    )


def test_sequence_without_valid_tokens_contributes_zero() -> None:
    # Row 2 has no valid token and garbage (NaN, inf) values: seq-mean-token-mean is
    # (1.5 + 4 + 0) / 3 = 11/6, finite, and the garbage gets zero gradient.
    per_token = torch.tensor(
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [float("nan"), float("inf"), 1.0]],
        requires_grad=True,
    )
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    loss = aggregate_loss(
        per_token, mask, "seq-mean-token-mean", LossScale(num_tokens=3, num_sequences=3)
    )
    assert loss.item() == pytest.approx(11.0 / 6.0)
    loss.backward()
    assert per_token.grad is not None
    # d/dx of (x00 + x01) / 2 / 3 = 1/6 ; of x10 / 1 / 3 = 1/3 ; masked: 0.
    expected = torch.tensor([[1 / 6, 1 / 6, 0.0], [1 / 3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(per_token.grad, expected)


def test_unknown_mode_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="token-mean") as info:
        aggregate_loss(PER_TOKEN, MASK, "sequence-mean", SCALE)
    assert "'sequence-mean'" in str(info.value)
    for mode in AGGREGATION_MODES:
        assert mode in str(info.value)


def test_sum_norm_needs_max_tokens() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate_loss(PER_TOKEN, MASK, "seq-mean-token-sum-norm", SCALE)


def test_empty_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="num_tokens"):
        aggregate_loss(PER_TOKEN, MASK, "token-mean", LossScale(num_tokens=0, num_sequences=2))
    with pytest.raises(ValueError, match="num_sequences"):
        aggregate_loss(
            PER_TOKEN, MASK, "seq-mean-token-sum", LossScale(num_tokens=3, num_sequences=0)
        )


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate_loss(PER_TOKEN, MASK[:, :2], "token-mean", SCALE)


def test_masked_mean() -> None:
    # (1 + 2 + 4) / 3 ; an empty mask gives 0, not NaN.
    assert masked_mean(PER_TOKEN, MASK).item() == pytest.approx(7.0 / 3.0)
    assert masked_mean(PER_TOKEN, torch.zeros_like(MASK)).item() == 0.0


def _random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(8, 6, generator=gen)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 4, 6])  # one sequence without valid tokens
    mask = torch.arange(6)[None, :] < lengths[:, None]
    return values, mask


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_accumulation_and_data_parallel_give_the_full_batch_gradient(mode: str) -> None:
    values, mask = _random_batch(0)
    scale = LossScale(num_tokens=int(mask.sum()), num_sequences=8)

    def grad_of(rows: slice, scale: LossScale) -> torch.Tensor:
        x = values.clone().requires_grad_(True)
        # A non-linear per-token loss so that the gradient depends on the value.
        per_token = x.square() + torch.sin(x)
        aggregate_loss(per_token[rows], mask[rows], mode, scale, max_tokens=6).backward()
        assert x.grad is not None
        return x.grad

    full = grad_of(slice(0, 8), scale)
    # 4 micro-batches of 2 rows, gradients accumulate (sum).
    accumulated = sum(grad_of(slice(i, i + 2), scale) for i in range(0, 8, 2))
    torch.testing.assert_close(accumulated, full, atol=1e-6, rtol=0)
    # 2 ranks of 4 rows, each loss scaled by world_size=2, gradients averaged.
    dp_scale = LossScale(scale.num_tokens, scale.num_sequences, world_size=2)
    averaged = (grad_of(slice(0, 4), dp_scale) + grad_of(slice(4, 8), dp_scale)) / 2
    torch.testing.assert_close(averaged, full, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- KL estimators
def test_estimators_are_the_documented_three() -> None:
    assert KL_ESTIMATORS == ("k1", "k2", "k3")


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        # Δ = 0.5: k1 = 0.5, k2 = 0.25 / 2 = 0.125, k3 = exp(-0.5) - 1 + 0.5 = 0.1065306597
        (0.5, {"k1": 0.5, "k2": 0.125, "k3": 0.1065306597}),
        # Δ = -1: k1 = -1, k2 = 1 / 2 = 0.5, k3 = exp(1) - 1 - 1 = 0.7182818285
        (-1.0, {"k1": -1.0, "k2": 0.5, "k3": 0.7182818285}),
        # Δ = 0: every estimator is 0
        (0.0, {"k1": 0.0, "k2": 0.0, "k3": 0.0}),
    ],
)
def test_kl_hand_values(delta: float, expected: dict[str, float]) -> None:
    ref = torch.tensor([[-2.0]])
    lp = ref + delta
    for estimator in KL_ESTIMATORS:
        value = kl_estimate(lp, ref, estimator).item()  # type: ignore[arg-type]
        assert value == pytest.approx(expected[estimator], abs=1e-6), estimator


def test_k3_clamps_before_exp() -> None:
    # Δ = 100 is clamped to 20: exp(-20) - 1 + 20 = 19.000000002
    # Δ = -100 is clamped to -20: exp(20) - 1 - 20 = 485165174.41 (finite, not inf)
    lp = torch.tensor([[100.0, -100.0]], dtype=torch.float64)
    k3 = kl_estimate(lp, torch.zeros_like(lp), "k3")
    assert torch.isfinite(k3).all()
    assert k3[0, 0].item() == pytest.approx(19.0 + math.exp(-20))
    assert k3[0, 1].item() == pytest.approx(math.exp(20) - 21.0)


def test_kl_gradients() -> None:
    # d k1/dlp = 1; d k2/dlp = Δ = 0.5; d k3/dlp = 1 - exp(-Δ) = 1 - exp(-0.5) = 0.3934693403
    expected = {"k1": 1.0, "k2": 0.5, "k3": 1.0 - math.exp(-0.5)}
    for estimator in KL_ESTIMATORS:
        lp = torch.tensor([[0.5]], requires_grad=True)
        kl_estimate(lp, torch.zeros(1, 1), estimator).sum().backward()  # type: ignore[arg-type]
        assert lp.grad is not None
        assert lp.grad.item() == pytest.approx(expected[estimator], abs=1e-6), estimator


def test_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")  # type: ignore[arg-type]
