"""The clipped value loss and the PPO policy loss, by hand; both exact under micro-batching."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.algorithms import AGGREGATION_MODES
from lightrft_core.interfaces import LossScale, PolicyLossInput, ValueLossInput
from lightrft_plugin_ppo.ppo import PPO
from lightrft_plugin_ppo.value_loss import clipped_value_loss

# ε_v = 0.2. Per token, V_clip = V_old + clip(V − V_old, ±0.2), L = 0.5·max((V−G)², (V_clip−G)²):
#   a: V_old 0.0, V  0.5, G 1.0: (−0.5)² = 0.25, V_clip 0.2: (−0.8)² = 0.64 -> L 0.32, clipped,
#      gradient 0 (V left the band towards G: the pessimistic branch holds it)
#   b: V_old 0.0, V −0.5, G 1.0: (−1.5)² = 2.25, V_clip −0.2: (−1.2)² = 1.44 -> L 1.125,
#      unclipped, dL/dV = V − G = −1.5
#   c: V_old 1.0, V  1.1, G 0.0: inside the band, both 1.21 -> L 0.605, dL/dV = 1.1
#   d: V_old 0.5, V  0.9, G 0.5: 0.16, V_clip 0.7: 0.04 -> L 0.08, unclipped, dL/dV = 0.4
OLD_VALUES = torch.tensor([[0.0, 0.0, 1.0, 0.5]])
VALUES = torch.tensor([[0.5, -0.5, 1.1, 0.9]])
RETURNS = torch.tensor([[1.0, 1.0, 0.0, 0.5]])


def test_clipped_value_loss_both_branches() -> None:
    values = VALUES.clone().requires_grad_(True)
    out = clipped_value_loss(values, OLD_VALUES, RETURNS, clip=0.2)
    torch.testing.assert_close(out.loss.detach(), torch.tensor([[0.32, 1.125, 0.605, 0.08]]))
    assert out.clipped.tolist() == [[True, False, False, False]]
    out.loss.sum().backward()
    assert values.grad is not None
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.5, 1.1, 0.4]]))


def test_without_a_clip_the_loss_is_half_the_squared_error() -> None:
    out = clipped_value_loss(VALUES, OLD_VALUES, RETURNS, clip=None)
    # 0.5·(0.25, 2.25, 1.21, 0.16)
    torch.testing.assert_close(out.loss, torch.tensor([[0.125, 1.125, 0.605, 0.08]]))
    assert not out.clipped.any()
    with pytest.raises(ValueError, match="value clip"):
        clipped_value_loss(VALUES, OLD_VALUES, RETURNS, clip=0.0)


def test_value_loss_method_aggregates_like_the_policy_loss() -> None:
    algo = PPO(PPO.Config(value_clip=0.2))
    mask = torch.tensor([[True, True, True, False]])  # token d does not count
    values = VALUES.clone().requires_grad_(True)
    out = algo.value_loss(ValueLossInput(values, OLD_VALUES, RETURNS, mask, LossScale(3, 1)))
    # token-mean over 3 tokens: (0.32 + 1.125 + 0.605) / 3 = 2.05 / 3
    assert out.loss.item() == pytest.approx(2.05 / 3)
    assert out.metrics["value_clip_fraction"].item() == pytest.approx(1 / 3)
    assert out.metrics["value_loss"].item() == pytest.approx(2.05 / 3)
    out.loss.backward()
    assert values.grad is not None
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.5, 1.1 / 3, 0.0]]))
    for value in out.metrics.values():
        assert not value.requires_grad


def test_a_shared_critic_weighs_the_value_loss_by_vf_coef() -> None:
    # The same tokens as above: the loss, and so the head's and the trunk's gradient, is
    # vf_coef = 0.5 times the separate critic's; the logged per-token loss is not weighted.
    mask = torch.tensor([[True, True, True, False]])
    batch = ValueLossInput(VALUES, OLD_VALUES, RETURNS, mask, LossScale(3, 1))
    shared = PPO(PPO.Config(critic="shared", vf_coef=0.5)).value_loss(batch)
    assert shared.loss.item() == pytest.approx(0.5 * 2.05 / 3)
    assert shared.metrics["value_loss"].item() == pytest.approx(2.05 / 3)


def test_ppo_policy_loss_is_the_core_ppo_clip() -> None:
    # ε = 0.2. Token 1: ρ = 1.5, A = 2 -> max(−3.0, −2.4) = −2.4 (clipped above);
    # token 2: ρ = 0.5, A = −1 -> max(0.5, 0.8) = 0.8 (clipped below); token 3 masked.
    # token-mean over 2 tokens: (−2.4 + 0.8) / 2 = −0.8.
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    log_probs = old + torch.log(torch.tensor([[1.5, 0.5, 3.0]]))
    out = PPO(PPO.Config()).policy_loss(
        PolicyLossInput(
            log_probs=log_probs.requires_grad_(True),
            old_log_probs=old,
            advantages=torch.tensor([[2.0, -1.0, 5.0]]),
            action_mask=torch.tensor([[True, True, False]]),
            scale=LossScale(2, 1),
        )
    )
    assert out.loss.item() == pytest.approx(-0.8)
    assert out.metrics["clip_fraction"].item() == pytest.approx(1.0)


def test_ppo_kl_as_a_loss_term() -> None:
    # k1 with Δ = lp − lp_ref = (0.5, −0.1): token-mean 0.2; β = 0.5 adds 0.1. ρ = 1, A = 0.
    lp = torch.tensor([[-1.0, -2.0]])
    out = PPO(PPO.Config(kl_coef=0.5, kl_mode="loss")).policy_loss(
        PolicyLossInput(
            log_probs=lp,
            old_log_probs=lp,
            advantages=torch.zeros(1, 2),
            action_mask=torch.ones(1, 2, dtype=torch.bool),
            scale=LossScale(2, 1),
            ref_log_probs=torch.tensor([[-1.5, -1.9]]),
        )
    )
    assert out.loss.item() == pytest.approx(0.1)
    assert out.metrics["kl"].item() == pytest.approx(0.2)


def _random_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t = 8, 7
    mask = torch.ones(b, t, dtype=torch.bool)
    for row in range(b):  # prompts of different lengths, right padding of different lengths
        mask[row, : 1 + row % 3] = False
        mask[row, t - row % 2 :] = False
    old = -torch.rand(b, t, generator=g) - 0.1
    return {
        "mask": mask,
        "old": old,
        "new": old + 0.3 * torch.randn(b, t, generator=g),
        "adv": torch.randn(b, t, generator=g),
        "old_values": torch.randn(b, t, generator=g),
        "values": torch.randn(b, t, generator=g),
        "returns": torch.randn(b, t, generator=g),
    }


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_value_and_policy_gradients_are_the_same_with_1_and_4_micro_batches(mode: str) -> None:
    algo = PPO(PPO.Config(loss_aggregation=mode, max_tokens_norm=7, value_clip=0.3))  # type: ignore[arg-type]
    x = _random_batch()
    scale = LossScale(int(x["mask"].sum()), x["mask"].shape[0])
    grads = {}
    for parts in (1, 4):
        values = x["values"].clone().requires_grad_(True)
        log_probs = x["new"].clone().requires_grad_(True)
        for rows in torch.arange(8).chunk(parts):
            algo.value_loss(
                ValueLossInput(
                    values[rows],
                    x["old_values"][rows],
                    x["returns"][rows],
                    x["mask"][rows],
                    scale,
                )
            ).loss.backward()
            algo.policy_loss(
                PolicyLossInput(
                    log_probs=log_probs[rows],
                    old_log_probs=x["old"][rows],
                    advantages=x["adv"][rows],
                    action_mask=x["mask"][rows],
                    scale=scale,
                )
            ).loss.backward()
        grads[parts] = (values.grad, log_probs.grad)
    assert grads[1][0] is not None and grads[1][0].abs().sum() > 0
    assert grads[1][1] is not None and grads[1][1].abs().sum() > 0
    torch.testing.assert_close(grads[1][0], grads[4][0], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[4][1], atol=1e-7, rtol=1e-6)
    assert (grads[1][0][~x["mask"]] == 0).all()
