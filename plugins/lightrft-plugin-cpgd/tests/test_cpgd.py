"""The CPGD algorithm: loss by hand, configuration, registration, learning (gradient
invariance under accumulation and data parallelism: ``test_conformance.py``)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import pytest
import torch

import lightrft_core
import lightrft_plugin_cpgd
import lightrft_plugin_cpgd.plugin
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import AlgorithmContext, LossScale, PolicyLossInput
from lightrft_core.plugins import PluginManager
from lightrft_plugin_cpgd.cpgd import CPGD


def _hand_batch() -> PolicyLossInput:
    # One sequence: (A = 2, δ = 0.3), (A = -1, δ = 0.5), then a padding position.
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    log_probs = (old + torch.tensor([[0.3, 0.5, 4.0]])).requires_grad_(True)
    return PolicyLossInput(
        log_probs=log_probs,
        old_log_probs=old,
        advantages=torch.tensor([[2.0, -1.0, 0.0]]),
        action_mask=torch.tensor([[True, True, False]]),
        scale=LossScale(num_tokens=2, num_sequences=1),
    )


def test_loss_value_gradient_and_metrics_by_hand() -> None:
    # α = 0.1, token-mean over 2 tokens.
    #   token 0: L^pg = -2·ln 1.2 = -0.3646431 (clipped), D = e^0.3 - 1.3 = 0.0498588
    #            -> -0.3646431 + 0.1·0.0498588 = -0.3596572
    #   token 1: L^pg = 0.5 (A < 0, above: not clipped), D = e^0.5 - 1.5 = 0.1487213
    #            -> 0.5 + 0.0148721 = 0.5148721
    #   loss = (-0.3596572 + 0.5148721)/2 = 0.0776074
    # Gradient: token 0: (0 + 0.1·(e^0.3 - 1))/2 = 0.1·0.3498588/2 = 0.0174929;
    #           token 1: (1 + 0.1·(e^0.5 - 1))/2 = (1 + 0.0648721)/2 = 0.5324361; padding 0.
    batch = _hand_batch()
    out = CPGD(CPGD.Config(policy_drift_coef=0.1)).policy_loss(batch)
    assert out.loss.item() == pytest.approx(0.0776074, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(batch.log_probs.grad, torch.tensor([[0.0174929, 0.5324361, 0.0]]))
    # clip fraction 1/2; drift (0.0498588 + 0.1487213)/2 = 0.0992900;
    # ratio mean (e^0.3 + e^0.5)/2 = (1.3498588 + 1.6487213)/2 = 1.4992900;
    # approx_kl (k3 of lp vs old): (e^-0.3 - 1 + 0.3 + e^-0.5 - 1 + 0.5)/2
    #   = (0.0408182 + 0.1065307)/2 = 0.0736744
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert out.metrics["policy_drift"].item() == pytest.approx(0.0992900, abs=1e-6)
    assert out.metrics["ratio_mean"].item() == pytest.approx(1.4992900, abs=1e-6)
    assert out.metrics["approx_kl"].item() == pytest.approx(0.0736744, abs=1e-6)
    assert all(not m.requires_grad for m in out.metrics.values())


def test_without_drift_only_the_clipped_policy_gradient_remains() -> None:
    # α = 0: loss = (-0.3646431 + 0.5)/2 = 0.0676784; gradient [0, 1/2, 0].
    batch = _hand_batch()
    out = CPGD(CPGD.Config(policy_drift_coef=0.0)).policy_loss(batch)
    assert out.loss.item() == pytest.approx((0.5 - 2 * math.log(1.2)) / 2, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(batch.log_probs.grad, torch.tensor([[0.0, 0.5, 0.0]]))


def test_seq_mean_token_sum_norm_divides_by_the_engine_max_new_tokens() -> None:
    # α = 0: token losses -0.3646431 and 0.5, one sequence: Σ_t L / MAX. The engine's
    # max_new_tokens = 4: 0.1353569 / 4 = 0.0338392; max_tokens_norm = 2 wins: 0.0676784.
    config = {"policy_drift_coef": 0.0, "loss_aggregation": "seq-mean-token-sum-norm"}
    algo = CPGD(CPGD.Config(**config))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set algorithm.max_tokens_norm"):
        algo.policy_loss(_hand_batch())
    algo.setup(AlgorithmContext(max_new_tokens=4))
    assert algo.policy_loss(_hand_batch()).loss.item() == pytest.approx(0.0338392, abs=1e-6)
    pinned = CPGD(CPGD.Config(**config, max_tokens_norm=2))  # type: ignore[arg-type]
    pinned.setup(AlgorithmContext(max_new_tokens=4))
    assert pinned.policy_loss(_hand_batch()).loss.item() == pytest.approx(0.0676784, abs=1e-6)


def test_reference_kl_term() -> None:
    # kl_coef 0.2, k1 with lp - ref = 0.4 on both tokens: + 0.2·0.4 = 0.08 (token-mean).
    base = _hand_batch()
    algo = CPGD(CPGD.Config(policy_drift_coef=0.0, kl_coef=0.2, kl_estimator="k1"))
    assert algo.needs_reference() and not CPGD().needs_reference()
    out = algo.policy_loss(replace(base, ref_log_probs=base.log_probs.detach() - 0.4))
    assert out.loss.item() == pytest.approx((0.5 - 2 * math.log(1.2)) / 2 + 0.08, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(ValueError, match="ref_log_probs"):
        algo.policy_loss(_hand_batch())


def test_on_policy_the_loss_is_the_reinforce_gradient() -> None:
    # lp = lp_old: δ = 0, no clipping, no drift gradient: dL/dlp = -A / N_tokens.
    lp = torch.tensor([[-0.5, -1.5, -2.5]], requires_grad=True)
    out = CPGD().policy_loss(
        PolicyLossInput(
            log_probs=lp,
            old_log_probs=lp.detach().clone(),
            advantages=torch.tensor([[1.5, -3.0, 0.5]]),
            action_mask=torch.ones(1, 3, dtype=torch.bool),
            scale=LossScale(num_tokens=3, num_sequences=1),
        )
    )
    assert out.loss.item() == pytest.approx(0.0)
    out.loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5, 1.0, -0.5 / 3]]))


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"clip_eps_low": 1.0}, "clip_eps_low"),
        ({"clip_eps_high": -0.1}, "clip_eps_high"),
        ({"policy_drift_coef": -0.1}, "policy_drift_coef"),
        ({"advantage_weighting": "rank"}, "advantage_weighting must be one of std"),
        ({"advantage_eps": -1.0}, "advantage_eps"),
        ({"clip_filter_max_weight": 0.5}, "clip_filter_max_weight"),
        ({"loss_aggregation": "sum"}, "loss_aggregation must be one of token-mean"),
        ({"max_tokens_norm": 0}, "max_tokens_norm must be >= 1"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"kl_estimator": "k4"}, "kl_estimator must be one of k1, k2, k3"),
    ],
)
def test_config_validation(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CPGD.Config(**options)


def test_defaults_and_class_attributes() -> None:
    cfg = CPGD.Config()
    assert (cfg.clip_eps_low, cfg.clip_eps_high, cfg.policy_drift_coef) == (0.2, 0.2, 0.01)
    assert cfg.advantage_weighting == "std" and cfg.loss_aggregation == "token-mean"
    assert all(f.metadata.get("help") for f in fields(CPGD.Config))
    assert CPGD.name == "cpgd" and CPGD.requires_groups
    assert not CPGD().needs_critic()


def _manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_cpgd.plugin, name="cpgd")
    return pm


def test_plugin_registers_into_a_fresh_manager() -> None:
    pm = _manager()
    assert pm.get_algorithm("cpgd") is CPGD
    assert pm.component_info("algorithm", "cpgd").plugin == "cpgd"


def test_config_loader_refuses_one_sample_per_prompt_and_reads_options() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            None, ["algorithm.name=cpgd", "engine.n_samples_per_prompt=1"], manager=_manager()
        )
    assert "n_samples_per_prompt >= 2, got 1" in str(err.value)
    cfg = load_config(
        None,
        [
            "algorithm.name=cpgd",
            "algorithm.policy_drift_coef=0.05",
            "algorithm.advantage_weighting=none",
        ],
        manager=_manager(),
    )
    assert cfg.algorithm.options.policy_drift_coef == 0.05
    assert cfg.algorithm.options.advantage_weighting == "none"


def test_version_is_in_lockstep_with_the_core() -> None:
    assert lightrft_plugin_cpgd.__version__ == lightrft_core.__version__


@pytest.mark.slow
def test_entry_point_module_does_not_import_torch() -> None:
    code = "import sys, lightrft_plugin_cpgd.plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------- learning
def test_mean_reward_rises(train_rewards: Callable[[str, list[str]], list[float]]) -> None:
    # The letter task of conftest.py: reward = fraction of 'a' characters in the response.
    rewards = train_rewards("cpgd", ["trainer.max_steps=16"])
    assert len(rewards) == 16
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.3, rewards
