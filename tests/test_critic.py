"""The critic contract (``lightrft_core/interfaces/algorithm.py``, "A critic"): what an
algorithm declares (``CriticSpec``, ``value_loss``), the base class's defaults, and the
loop's explained variance of the old values, by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightrft_core.interfaces import (
    AdvantageOutput,
    Algorithm,
    CriticSpec,
    LossScale,
    PolicyLossOutput,
    ValueLossInput,
)
from lightrft_core.trainer.critic import explained_variance


class _NoCritic(Algorithm):
    name = "no_critic"

    def compute_advantages(self, batch):  # type: ignore[no-untyped-def]
        return AdvantageOutput(advantages=torch.zeros_like(batch.action_mask, dtype=torch.float))

    def policy_loss(self, batch):  # type: ignore[no-untyped-def]
        return PolicyLossOutput(loss=batch.log_probs.sum())


def test_the_base_algorithm_needs_no_critic_and_always_updates_the_policy() -> None:
    algo = _NoCritic()
    assert not algo.needs_critic()
    assert all(algo.updates_policy(step) for step in (1, 2, 100))
    # the default critic, were one asked for: separate, from the actor's checkpoint, zero head
    assert algo.critic_spec() == CriticSpec(layout="separate", path=None, head_init_std=0.0)
    batch = ValueLossInput(*(torch.zeros(1, 2) for _ in range(4)), scale=LossScale(1, 1))
    with pytest.raises(NotImplementedError, match="_NoCritic needs a critic"):
        algo.value_loss(batch)


def test_critic_spec_checks() -> None:
    assert CriticSpec("shared").layout == "shared"
    with pytest.raises(ValueError, match="separate or shared"):
        CriticSpec("both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no path"):
        CriticSpec("shared", path="/somewhere")
    with pytest.raises(ValueError, match="head_init_std"):
        CriticSpec(head_init_std=-1.0)


def test_value_loss_input_carries_the_micro_batch_and_the_loss_scale() -> None:
    names = [f.name for f in dataclasses.fields(ValueLossInput)]
    assert names == ["values", "old_values", "returns", "action_mask", "scale"]


def test_explained_variance_by_hand() -> None:
    mask = torch.tensor([[True, True, True, False]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    # Var(G) = 2/3. V = G: residual 0 -> EV 1. V = 0: residual = G -> EV 0.
    # V = (1, 2, 4): residual (0, 0, −1), mean −1/3, Var = (1/9 + 1/9 + 4/9)/3 = 2/9
    #   -> EV = 1 − (2/9)/(2/3) = 2/3.
    perfect = explained_variance(returns, returns, mask)
    assert perfect["explained_variance"] == pytest.approx(1.0)
    assert perfect["return_mean"] == pytest.approx(2.0)
    assert explained_variance(torch.zeros(1, 4), returns, mask)["explained_variance"] == (
        pytest.approx(0.0)
    )
    off = explained_variance(torch.tensor([[1.0, 2.0, 4.0, -5.0]]), returns, mask)
    assert off["explained_variance"] == pytest.approx(2 / 3)
    assert off["value_mean"] == pytest.approx(7 / 3)
    # no spread in the returns: 0, not NaN; no token at all: zeros
    flat = explained_variance(torch.zeros(1, 4), torch.ones(1, 4), mask)
    assert flat["explained_variance"] == 0.0
    assert explained_variance(returns, returns, torch.zeros(1, 4, dtype=torch.bool)) == {
        "explained_variance": 0.0,
        "value_mean": 0.0,
        "return_mean": 0.0,
    }


def test_explained_variance_sums_over_ranks() -> None:
    # Two ranks holding the same tokens: every sum doubles, the statistics do not change.
    mask = torch.tensor([[True, True, True, False]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    values = torch.tensor([[1.0, 2.0, 4.0, -5.0]])
    calls = []

    def two_ranks(value: torch.Tensor, op: str) -> torch.Tensor:
        calls.append(op)
        return 2 * value

    stats = explained_variance(values, returns, mask, two_ranks)
    assert calls == ["sum"]
    assert stats == pytest.approx(explained_variance(values, returns, mask))
