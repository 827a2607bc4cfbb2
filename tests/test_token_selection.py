"""High-entropy token selection and the entropy bonus (lightrft_core.algorithms.token_selection)."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.algorithms.token_selection import (
    DEFAULT_HIGH_ENTROPY_FRACTION,
    entropy_bonus_loss,
    high_entropy_token_mask,
    tokens_to_keep,
)
from lightrft_core.interfaces import LossScale


def test_tokens_to_keep() -> None:
    # k = min(n, max(1, ceil(f·n))), 0 for an empty sequence. f = 0.2:
    #   n = 10 -> 2; n = 7 -> ceil(1.4) = 2; n = 3 -> ceil(0.6) = 1; n = 1 -> 1; n = 0 -> 0;
    #   n = 15 -> 3 (0.2 * 15 is 3.0000000000000004 in floating point, still 3).
    lengths = torch.tensor([10, 7, 3, 1, 0, 15])
    assert tokens_to_keep(lengths, 0.2).tolist() == [2, 2, 1, 1, 0, 3]
    # f = 1 keeps everything; a tiny f keeps one token of each non-empty sequence.
    assert tokens_to_keep(lengths, 1.0).tolist() == [10, 7, 3, 1, 0, 15]
    assert tokens_to_keep(lengths, 1e-9).tolist() == [1, 1, 1, 1, 0, 1]


def test_keeps_the_highest_entropy_tokens_of_each_row() -> None:
    entropy = torch.tensor(
        [
            [0.5, 2.0, 1.0, 3.0, 0.1],  # 5 tokens, f = 0.4 -> 2 kept: 3.0 (t=3), 2.0 (t=1)
            [9.0, 0.2, 0.7, 0.4, 9.0],  # tokens 1..3 only (9.0 lies outside the mask) -> 0.7
            [4.0, 0.0, 0.0, 0.0, 0.0],  # a 1-token response keeps its token
            [5.0, 5.0, 5.0, 5.0, 5.0],  # no response token: nothing
        ]
    )
    mask = torch.tensor(
        [
            [True, True, True, True, True],
            [False, True, True, True, False],
            [True, False, False, False, False],
            [False, False, False, False, False],
        ]
    )
    # Row 1: 3 tokens, ceil(0.4 · 3) = ceil(1.2) = 2 kept: 0.7 (t=2) and 0.4 (t=3).
    keep = high_entropy_token_mask(entropy, mask, 0.4)
    assert keep.tolist() == [
        [False, True, False, True, False],
        [False, False, True, True, False],
        [True, False, False, False, False],
        [False, False, False, False, False],
    ]
    # The default f = 0.2: row 0 keeps ceil(1.0) = 1 token (t=3), row 1 ceil(0.6) = 1 (t=2).
    assert DEFAULT_HIGH_ENTROPY_FRACTION == 0.2
    keep = high_entropy_token_mask(entropy, mask)
    assert keep.sum(dim=1).tolist() == [1, 1, 1, 0]
    assert keep[0, 3] and keep[1, 2] and keep[2, 0]


def test_ties_keep_exactly_k_tokens_the_earliest_first() -> None:
    # Four equal entropies, f = 0.5 -> exactly 2 tokens: positions 0 and 1. With a higher
    # value at t=3 it comes first, then the earliest of the tied ones (t=0).
    entropy = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 2.0]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    keep = high_entropy_token_mask(entropy, mask, 0.5)
    assert keep.tolist() == [[True, True, False, False], [True, False, False, True]]


def test_non_finite_entropy_ranks_lowest_and_no_gradient_is_needed() -> None:
    entropy = torch.tensor([[float("nan"), 0.1, float("inf"), 0.3]], requires_grad=True)
    keep = high_entropy_token_mask(entropy, torch.ones(1, 4, dtype=torch.bool), 0.5)
    assert keep.tolist() == [[False, True, False, True]]
    assert not keep.requires_grad


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        high_entropy_token_mask(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), fraction)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        high_entropy_token_mask(torch.zeros(1, 3), torch.ones(1, 2, dtype=torch.bool))


def test_selection_of_a_row_does_not_depend_on_the_other_rows() -> None:
    # Per-sequence selection: a row selects the same tokens alone or in any batch (what
    # makes the loss exact under micro-batching and data parallelism).
    gen = torch.Generator().manual_seed(0)
    entropy = torch.rand(6, 9, generator=gen)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 7, 0, 3])[:, None]
    whole = high_entropy_token_mask(entropy, mask, 0.3)
    for row in range(6):
        alone = high_entropy_token_mask(entropy[row : row + 1], mask[row : row + 1], 0.3)
        assert torch.equal(alone, whole[row : row + 1])


# ---------------------------------------------------------------------- entropy bonus
ENTROPY = [[1.0, 2.0, 7.0], [3.0, 7.0, 7.0]]  # 7.0 lies outside the mask
MASK = [[True, True, False], [True, False, False]]


def test_entropy_bonus_token_mean() -> None:
    # token-mean over N_tok = 3: (1 + 2 + 3) / 3 = 2; coef 0.1 -> -0.2.
    # d loss / d H_t = -0.1 / 3 on valid tokens, 0 elsewhere.
    entropy = torch.tensor(ENTROPY, requires_grad=True)
    loss = entropy_bonus_loss(entropy, torch.tensor(MASK), "token-mean", LossScale(3, 2), coef=0.1)
    assert loss.item() == pytest.approx(-0.2)
    loss.backward()
    g = -0.1 / 3
    torch.testing.assert_close(entropy.grad, torch.tensor([[g, g, 0.0], [g, 0.0, 0.0]]))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # sequence means 1.5 and 3 -> mean 2.25 -> -0.1 · 2.25
        ("seq-mean-token-mean", -0.225),
        # sequence sums 3 and 3 -> mean 3 -> -0.3
        ("seq-mean-token-sum", -0.3),
        # sums over max_tokens 4: 0.75 and 0.75 -> mean 0.75 -> -0.075
        ("seq-mean-token-sum-norm", -0.075),
    ],
)
def test_entropy_bonus_is_aggregated_like_the_loss(mode: str, expected: float) -> None:
    loss = entropy_bonus_loss(
        torch.tensor(ENTROPY), torch.tensor(MASK), mode, LossScale(3, 2), coef=0.1, max_tokens=4
    )
    assert loss.item() == pytest.approx(expected)


def test_entropy_bonus_gradient_is_the_same_with_micro_batches() -> None:
    gen = torch.Generator().manual_seed(1)
    entropy = torch.rand(8, 5, generator=gen)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 1, 3, 5, 2, 4])[:, None]
    scale = LossScale(int(mask.sum()), 8)

    def grad(parts: list[slice]) -> torch.Tensor:
        leaf = entropy.clone().requires_grad_(True)
        for rows in parts:
            entropy_bonus_loss(leaf[rows], mask[rows], "token-mean", scale, coef=0.05).backward()
        assert leaf.grad is not None
        return leaf.grad

    torch.testing.assert_close(grad([slice(i, i + 2) for i in range(0, 8, 2)]), grad([slice(0, 8)]))
