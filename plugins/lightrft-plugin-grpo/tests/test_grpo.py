"""The GRPO algorithm: advantages, loss, metrics, configuration, registration (gradient
invariance under accumulation and data parallelism: ``test_conformance.py``)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
import torch

import lightrft_core
import lightrft_plugin_grpo
import lightrft_plugin_grpo.plugin
from lightrft_core.interfaces import AdvantageInput, AlgorithmContext, LossScale, PolicyLossInput
from lightrft_core.plugins import PluginManager
from lightrft_plugin_grpo.grpo import GRPO


def make(**options: Any) -> GRPO:
    return GRPO(GRPO.Config(**options))


# ---------------------------------------------------------------------- advantages
def test_advantages_are_broadcast_over_the_response() -> None:
    # Rewards [1, 0 | 0, 1], group 2: ±0.5 / (sqrt(0.5) + 1e-6) = ±0.7071057812 per token.
    mask = torch.tensor(
        [[True, True, False], [False, True, True], [True, False, False], [True, True, True]]
    )
    out = make().compute_advantages(
        AdvantageInput(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), action_mask=mask, group_size=2)
    )
    a = 0.7071057812
    expected = torch.tensor([[a, a, 0.0], [0.0, -a, -a], [-a, 0.0, 0.0], [a, a, a]])
    torch.testing.assert_close(out.advantages, expected)
    assert out.returns is None
    assert out.metrics["zero_std_group_fraction"] == 0.0
    assert out.metrics["reward_mean"] == pytest.approx(0.5)
    assert out.metrics["advantage_mean"] == pytest.approx(0.0, abs=1e-7)
    assert out.metrics["advantage_std"] == pytest.approx(a, abs=1e-6)


def test_equal_reward_group_gives_zero_and_is_counted() -> None:
    # Groups [1, 1] (no signal -> exactly 0) and [0, 1] (±0.7071057812).
    out = make().compute_advantages(
        AdvantageInput(
            rewards=torch.tensor([1.0, 1.0, 0.0, 1.0]),
            action_mask=torch.ones(4, 2, dtype=torch.bool),
            group_size=2,
        )
    )
    assert torch.equal(out.advantages[:2], torch.zeros(2, 2))
    assert out.advantages[2, 0].item() == pytest.approx(-0.7071057812, abs=1e-6)
    assert out.metrics["zero_std_group_fraction"] == 0.5


def test_dr_grpo_advantages() -> None:
    # [1, 2, 3, 4] without std scaling: r - 2.5 = -1.5, -0.5, 0.5, 1.5.
    out = make(scale_rewards_by_std=False).compute_advantages(
        AdvantageInput(
            rewards=torch.tensor([1.0, 2.0, 3.0, 4.0]),
            action_mask=torch.ones(4, 1, dtype=torch.bool),
            group_size=4,
        )
    )
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([-1.5, -0.5, 0.5, 1.5]))


def test_kl_in_reward_is_subtracted_before_normalisation() -> None:
    # k1 with Δ = old - ref: sample 0 tokens [0.2, 0.4] (both valid) -> Σ = 0.6;
    # sample 1 tokens [1.0, 5.0] with only the first valid -> Σ = 1.0.
    # β = 0.5: rewards [1, 0] become [1 - 0.3, 0 - 0.5] = [0.7, -0.5]; mean 0.1;
    # Dr.GRPO (no std): advantages [0.6, -0.6].
    old = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    ref = old - torch.tensor([[0.2, 0.4], [1.0, 5.0]])
    algo = make(kl_mode="reward", kl_coef=0.5, kl_estimator="k1", scale_rewards_by_std=False)
    assert algo.needs_reference()
    out = algo.compute_advantages(
        AdvantageInput(
            rewards=torch.tensor([1.0, 0.0]),
            action_mask=torch.tensor([[True, True], [True, False]]),
            group_size=2,
            old_log_probs=old,
            ref_log_probs=ref,
        )
    )
    torch.testing.assert_close(out.advantages, torch.tensor([[0.6, 0.6], [-0.6, 0.0]]))
    # mean of β·Σ kl = (0.3 + 0.5) / 2
    assert out.metrics["kl_penalty_mean"] == pytest.approx(0.4)
    assert out.metrics["reward_mean"] == pytest.approx(0.1)


def test_kl_in_reward_needs_log_probs() -> None:
    algo = make(kl_mode="reward", kl_coef=0.1)
    with pytest.raises(ValueError, match="ref_log_probs"):
        algo.compute_advantages(
            AdvantageInput(
                rewards=torch.tensor([1.0, 0.0]),
                action_mask=torch.ones(2, 1, dtype=torch.bool),
                group_size=2,
            )
        )


def test_group_size_one_is_refused() -> None:
    with pytest.raises(ValueError, match="group_size >= 2"):
        make().compute_advantages(
            AdvantageInput(
                rewards=torch.tensor([1.0, 0.0]),
                action_mask=torch.ones(2, 1, dtype=torch.bool),
                group_size=1,
            )
        )


# ---------------------------------------------------------------------- policy loss
def _hand_batch(**overrides: Any) -> PolicyLossInput:
    # One sequence, 3 positions, the last is padding. Ratios 1.5 and 1.1, A = 2.
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    log_probs = (old + torch.log(torch.tensor([[1.5, 1.1, 7.0]]))).requires_grad_(True)
    fields: dict[str, Any] = {
        "log_probs": log_probs,
        "old_log_probs": old,
        "advantages": torch.tensor([[2.0, 2.0, 0.0]]),
        "action_mask": torch.tensor([[True, True, False]]),
        "scale": LossScale(num_tokens=2, num_sequences=1),
    }
    fields.update(overrides)
    return PolicyLossInput(**fields)


def test_policy_loss_hand_value_and_metrics() -> None:
    # ε = 0.2: token 0: max(-3.0, -2.4) = -2.4 (clipped); token 1: -2.2; token 2 masked.
    # token-mean over 2 tokens: (-2.4 - 2.2) / 2 = -2.3.
    batch = _hand_batch()
    out = make().policy_loss(batch)
    assert out.loss.item() == pytest.approx(-2.3, abs=1e-6)
    # clip fraction 1/2; ratio mean (1.5 + 1.1) / 2 = 1.3;
    # approx_kl (k3, Δ = ln ρ): (1/1.5 - 1 + ln 1.5 + 1/1.1 - 1 + ln 1.1) / 2
    #   = (0.0721317748 + 0.0044010889) / 2 = 0.0382664318
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert out.metrics["ratio_mean"].item() == pytest.approx(1.3, abs=1e-6)
    assert out.metrics["approx_kl"].item() == pytest.approx(0.0382664318, abs=1e-6)
    assert "kl" not in out.metrics
    assert all(not m.requires_grad for m in out.metrics.values())
    # Gradient: clipped token 0 -> 0; token 1: d(-A·ρ/2)/dlp = -2 · 1.1 / 2 = -1.1; pad -> 0.
    out.loss.backward()
    assert batch.log_probs.grad is not None
    torch.testing.assert_close(batch.log_probs.grad, torch.tensor([[0.0, -1.1, 0.0]]))


def test_kl_in_loss() -> None:
    # k1 with lp - ref = 0.5 on both valid tokens: KL token-mean 0.5; β = 0.1:
    # loss = -2.3 + 0.1 · 0.5 = -2.25.
    base = _hand_batch()
    ref = base.log_probs.detach() - 0.5
    algo = make(kl_coef=0.1, kl_estimator="k1")
    assert algo.needs_reference()
    out = algo.policy_loss(replace(base, ref_log_probs=ref))
    assert out.loss.item() == pytest.approx(-2.25, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.5, abs=1e-6)


def test_kl_in_loss_needs_reference() -> None:
    with pytest.raises(ValueError, match="ref_log_probs"):
        make(kl_coef=0.1).policy_loss(_hand_batch())


def test_kl_is_reported_without_coefficient() -> None:
    assert not make().needs_reference()
    base = _hand_batch()
    out = make().policy_loss(replace(base, ref_log_probs=base.log_probs.detach() - 0.5))
    # k3 with Δ = 0.5: exp(-0.5) - 1 + 0.5 = 0.1065306597; the loss is unchanged.
    assert out.metrics["kl"].item() == pytest.approx(0.1065306597, abs=1e-6)
    assert out.loss.item() == pytest.approx(-2.3, abs=1e-6)


def test_dual_clip_metric() -> None:
    # A = -1, ρ = 5 on the first token, c = 3: loss min(5, 3) = 3; second token A = -1,
    # ρ = 1 -> 1. token-mean (3 + 1) / 2 = 2; dual clip fraction 1/2.
    old = torch.zeros(1, 2)
    batch = PolicyLossInput(
        log_probs=torch.tensor([[math.log(5.0), 0.0]], requires_grad=True),
        old_log_probs=old,
        advantages=torch.tensor([[-1.0, -1.0]]),
        action_mask=torch.ones(1, 2, dtype=torch.bool),
        scale=LossScale(num_tokens=2, num_sequences=1),
    )
    out = make(dual_clip=3.0).policy_loss(batch)
    assert out.loss.item() == pytest.approx(2.0, abs=1e-6)
    assert out.metrics["dual_clip_fraction"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------- sum-norm constant
def _sum_norm_batch(**overrides: Any) -> PolicyLossInput:
    # Two sequences at ratio 1 (lp = old): per-token loss -A. Sequence 0: A = 1 on 2 tokens;
    # sequence 1: A = -0.5 on 1 token.
    fields: dict[str, Any] = {
        "log_probs": torch.zeros(2, 2, requires_grad=True),
        "old_log_probs": torch.zeros(2, 2),
        "advantages": torch.tensor([[1.0, 1.0], [-0.5, 0.0]]),
        "action_mask": torch.tensor([[True, True], [True, False]]),
        "scale": LossScale(num_tokens=3, num_sequences=2),
    }
    fields.update(overrides)
    return PolicyLossInput(**fields)


def test_sum_norm_divides_by_the_engine_max_new_tokens() -> None:
    # Token sums: -2 and +0.5; MAX_TOKENS = 4 (from the loop): (-2/4 + 0.5/4) / 2 = -0.1875.
    algo = make(loss_aggregation="seq-mean-token-sum-norm")
    algo.setup(AlgorithmContext(max_new_tokens=4))
    out = algo.policy_loss(_sum_norm_batch())
    assert out.loss.item() == pytest.approx(-0.1875)
    # max_tokens_norm, when set, wins: (-2/2 + 0.5/2) / 2 = -0.375.
    algo = make(loss_aggregation="seq-mean-token-sum-norm", max_tokens_norm=2)
    algo.setup(AlgorithmContext(max_new_tokens=4))
    out = algo.policy_loss(_sum_norm_batch())
    assert out.loss.item() == pytest.approx(-0.375)


def test_sum_norm_without_a_constant_is_refused_when_the_loss_is_computed() -> None:
    algo = make(loss_aggregation="seq-mean-token-sum-norm")  # a valid configuration
    with pytest.raises(ValueError, match="set algorithm.max_tokens_norm"):
        algo.policy_loss(_sum_norm_batch())


# ---------------------------------------------------------------------- entropy options
def test_high_entropy_token_selection_zeroes_the_other_tokens() -> None:
    # _hand_batch: ratios 1.5 (clipped, -2.4) and 1.1 (-2.2), A = 2, third position padding.
    # Entropies 0.3 and 0.9 (9.0 on the padding is ignored); fraction 0.5 of 2 tokens keeps
    # ceil(1.0) = 1 token: the second. Loss: -2.2 / N_tok (still 2) = -1.1.
    entropy = torch.tensor([[0.3, 0.9, 9.0]])
    out = make(high_entropy_token_fraction=0.5).policy_loss(_hand_batch(entropy=entropy))
    assert out.loss.item() == pytest.approx(-1.1, abs=1e-6)
    assert out.metrics["selected_token_fraction"].item() == pytest.approx(0.5)
    assert out.metrics["clip_fraction"].item() == 0.0  # over the selected token only
    # Gradient: token 1: -A·ρ / 2 = -2·1.1 / 2 = -1.1; token 0 is not selected: 0.
    batch = _hand_batch(entropy=entropy)
    make(high_entropy_token_fraction=0.5).policy_loss(batch).loss.backward()
    assert batch.log_probs.grad is not None
    torch.testing.assert_close(batch.log_probs.grad, torch.tensor([[0.0, -1.1, 0.0]]))


def test_entropy_bonus_is_added_and_has_gradient() -> None:
    # Entropies 1 and 3 on the 2 valid tokens: token-mean 2; coef 0.01: bonus -0.02;
    # loss -2.3 - 0.02 = -2.32. d loss / d H_t = -0.01 / 2 = -0.005 on valid tokens.
    entropy = torch.tensor([[1.0, 3.0, 5.0]], requires_grad=True)
    out = make(entropy_coef=0.01).policy_loss(_hand_batch(entropy=entropy))
    assert out.loss.item() == pytest.approx(-2.32, abs=1e-6)
    out.loss.backward()
    assert entropy.grad is not None
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.005, -0.005, 0.0]]))


@pytest.mark.parametrize(
    "options", [{"entropy_coef": 0.01}, {"high_entropy_token_fraction": 0.2}], ids=str
)
def test_entropy_options_need_the_entropy(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="PolicyLossInput.entropy"):
        make(**options).policy_loss(_hand_batch())


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"loss_aggregation": "sum"}, "loss_aggregation must be one of token-mean"),
        ({"dual_clip": 1.0}, "dual_clip must be > 1"),
        ({"dual_clip": 0.5}, "dual_clip must be > 1"),
        ({"clip_eps_low": -0.1}, "clip_eps_low"),
        ({"clip_eps_low": 1.0}, "clip_eps_low"),
        ({"clip_eps_high": -0.2}, "clip_eps_high"),
        ({"advantage_eps": -1e-6}, "advantage_eps"),
        ({"max_tokens_norm": 0}, "max_tokens_norm must be >= 1"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"kl_estimator": "k4"}, "kl_estimator must be one of k1, k2, k3"),
        ({"kl_mode": "both"}, "kl_mode must be one of reward, loss"),
        ({"high_entropy_token_fraction": 0.0}, "high_entropy_token_fraction must be in"),
        ({"high_entropy_token_fraction": 1.5}, "high_entropy_token_fraction must be in"),
        ({"entropy_coef": -0.1}, "entropy_coef must be >= 0"),
    ],
)
def test_config_validation(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GRPO.Config(**options)


def test_config_fields_are_documented() -> None:
    from dataclasses import fields

    for f in fields(GRPO.Config):
        assert f.metadata.get("help"), f.name


def test_class_attributes() -> None:
    assert GRPO.name == "grpo"
    assert GRPO.requires_groups
    assert not GRPO().needs_critic()
    assert isinstance(GRPO().config, GRPO.Config)


# ---------------------------------------------------------------------- packaging
def test_plugin_registers_into_a_fresh_manager() -> None:
    from lightrft_plugin_grpo.dapo import DAPO
    from lightrft_plugin_grpo.dr_grpo import DrGRPO
    from lightrft_plugin_grpo.gmpo import GMPO
    from lightrft_plugin_grpo.gspo import GSPO, GSPOToken

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    expected = {
        "grpo": GRPO,
        "dr_grpo": DrGRPO,
        "dapo": DAPO,
        "gspo": GSPO,
        "gspo_token": GSPOToken,
        "gmpo": GMPO,
    }
    for name, cls in expected.items():
        assert pm.get_algorithm(name) is cls
        assert pm.component_info("algorithm", name).plugin == "grpo"


def test_version_is_in_lockstep_with_the_core() -> None:
    assert lightrft_plugin_grpo.__version__ == lightrft_core.__version__


@pytest.mark.slow
def test_entry_point_module_does_not_import_torch() -> None:
    code = "import sys, lightrft_plugin_grpo.plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
