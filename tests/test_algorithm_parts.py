"""Algorithms built from parts (``lightrft_core.algorithms.parts``): the core's clipped loss
alone, presets' merged configs, swapping parts (in Python and from the configuration) and
the errors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss
from lightrft_core.algorithms.groups import broadcast_to_tokens
from lightrft_core.algorithms.parts import PartsAlgorithm, preset, resolve_algorithm
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import (
    AdvantageEstimator,
    AdvantageInput,
    AdvantageOutput,
    LossScale,
    PolicyLossInput,
)
from lightrft_core.plugins import PluginManager
from lightrft_plugin_grpo.grpo import GRPO, GroupNormalizedEstimator
from lightrft_plugin_grpo.gspo import GSPO, GSPOLoss
from lightrft_plugin_reinforce.rloo import RLOO, RLOOEstimator

FAKES = ["model.name=fake", "strategy.name=fake", "engine.name=fake", "reward.name=constant"]


class BatchMean(AdvantageEstimator):
    """A test estimator without KL options: the reward minus the batch mean, times a scale."""

    name = "batch_mean"

    @dataclass
    class Config:
        scale: float = field(default=1.0, metadata={"help": "Multiplies the advantages."})

    def __call__(self, batch: AdvantageInput) -> AdvantageOutput:
        rewards = batch.rewards.float()
        advantages = self.config.scale * (rewards - rewards.mean())
        return AdvantageOutput(broadcast_to_tokens(advantages, batch.action_mask.bool()))


def _loss_batch() -> PolicyLossInput:
    # One sequence, 3 positions, the last is padding. Ratios 1.5 and 1.1, A = 2 and 2.
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    log_probs = (old + torch.log(torch.tensor([[1.5, 1.1, 7.0]]))).requires_grad_(True)
    return PolicyLossInput(
        log_probs=log_probs,
        old_log_probs=old,
        advantages=torch.tensor([[2.0, 2.0, 0.0]]),
        action_mask=torch.tensor([[True, True, False]]),
        scale=LossScale(num_tokens=2, num_sequences=1),
    )


# ---------------------------------------------------------------------- a part alone
def test_the_clipped_loss_alone() -> None:
    # ε = 0.2: token 0: max(-2·1.5, -2·1.2) = -2.4 (clipped); token 1: -2·1.1 = -2.2.
    # token-mean: -2.3; gradient: 0 (clipped) and -A·ρ/2 = -1.1; padding 0.
    batch = _loss_batch()
    out = ClippedPolicyLoss()(batch)
    assert out.loss.item() == pytest.approx(-2.3, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(batch.log_probs.grad, torch.tensor([[0.0, -1.1, 0.0]]))
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.5)
    # clip-higher ε_high = 0.6 leaves token 0 unclipped: (-3.0 - 2.2) / 2 = -2.6
    wide = ClippedPolicyLoss(ClippedPolicyLoss.Config(clip_eps_high=0.6))
    assert wide(_loss_batch()).loss.item() == pytest.approx(-2.6, abs=1e-6)


def test_a_loss_passed_beta_overrides_the_configured_one() -> None:
    # kl_mode loss, k1, lp - ref = 0.5 on both tokens: the KL term is β·0.5.
    loss = ClippedPolicyLoss(ClippedPolicyLoss.Config(kl_coef=0.1, kl_mode="loss"))
    batch = _loss_batch()
    batch.ref_log_probs = batch.log_probs.detach() - 0.5
    assert loss(batch).loss.item() == pytest.approx(-2.3 + 0.1 * 0.5, abs=1e-6)
    batch.kl_coef = 0.4
    assert loss(batch).loss.item() == pytest.approx(-2.3 + 0.4 * 0.5, abs=1e-6)
    assert loss.needs_reference() and loss.initial_kl_coef() == 0.1


# ---------------------------------------------------------------------- presets
def test_a_preset_merges_the_parts_options_with_its_defaults() -> None:
    names = [f.name for f in fields(GRPO.Config)]
    assert names.count("kl_coef") == 1  # declared by both parts, merged once
    assert {"scale_rewards_by_std", "clip_eps_high", "entropy_coef"} <= set(names)
    cfg = GRPO.Config()
    assert (cfg.kl_estimator, cfg.kl_mode) == ("k3", "loss")  # GRPO's defaults
    assert GRPO.requires_groups and issubclass(GRPO, PartsAlgorithm)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        GRPO.Config(dual_clip=0.5)  # the loss checks its own options
    with pytest.raises(TypeError, match="defaults for options the parts do not have"):
        preset("bad", advantage=RLOOEstimator, loss=ClippedPolicyLoss, defaults={"nope": 1})


def test_a_kl_term_without_a_part_to_apply_it_is_refused() -> None:
    algo = preset("mean_clip", advantage=BatchMean, loss=ClippedPolicyLoss)
    algo.Config(kl_coef=0.1, kl_mode="loss")  # the loss applies it
    with pytest.raises(ValueError, match="advantage 'batch_mean' has no KL option"):
        algo.Config(kl_coef=0.1, kl_mode="reward")


def test_swapping_parts_gives_the_parts_numbers() -> None:
    mixed = GRPO.with_parts(RLOOEstimator, GSPOLoss)
    assert mixed is GRPO.with_parts(RLOOEstimator, GSPOLoss)  # one class per mix
    assert GRPO.with_parts() is GRPO
    assert mixed.name == "grpo" and mixed.requires_groups
    cfg = mixed.Config()
    # GSPO's own clip range; GRPO's KL defaults stay; GRPO's estimator options are gone
    assert (cfg.clip_eps_low, cfg.kl_mode) == (3e-4, "loss")
    assert "scale_rewards_by_std" not in {f.name for f in fields(cfg)}
    # rewards [1, 0, 0, 0] in one group of 4: RLOO's A = r - mean(others) = 1, -1/3 ...
    mask = torch.ones(4, 2, dtype=torch.bool)
    batch = AdvantageInput(torch.tensor([1.0, 0.0, 0.0, 0.0]), mask, group_size=4)
    adv = mixed().compute_advantages(batch).advantages
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    torch.testing.assert_close(adv, RLOO().compute_advantages(batch).advantages)
    loss = PolicyLossInput(
        torch.full((4, 2), -0.9, requires_grad=True),
        torch.full((4, 2), -1.0),
        adv,
        mask,
        LossScale(8, 4),
    )
    options = {"clip_eps_low": 0.05, "clip_eps_high": 0.05}
    ours = mixed(mixed.Config(**options)).policy_loss(loss).loss
    theirs = GSPO(GSPO.Config(**options)).policy_loss(loss).loss
    assert ours.item() == pytest.approx(theirs.item())


# ---------------------------------------------------------------------- from the configuration
@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_ppo.plugin
    import lightrft_plugin_reinforce.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_reinforce.plugin, name="reinforce")
    pm.register(lightrft_plugin_ppo.plugin, name="ppo")
    return pm


def test_the_configuration_mixes_parts(manager: PluginManager) -> None:
    overrides = [*FAKES, "algorithm.advantage=rloo", "algorithm.loss=gspo"]
    cfg = load_config(None, [*overrides, "algorithm.clip_eps_high=0.01"], manager=manager)
    assert type(cfg.algorithm.options) is GRPO.with_parts(RLOOEstimator, GSPOLoss).Config
    assert (cfg.algorithm.options.clip_eps_low, cfg.algorithm.options.clip_eps_high) == (
        3e-4,
        0.01,
    )
    algo = resolve_algorithm(manager, "grpo", "rloo", "gspo")(cfg.algorithm.options)
    assert isinstance(algo.estimator, RLOOEstimator) and isinstance(algo.loss, GSPOLoss)
    assert resolve_algorithm(manager, "grpo") is GRPO
    only_loss = load_config(None, [*FAKES, "algorithm.loss=gspo"], manager=manager)
    assert (
        type(only_loss.algorithm.options)
        is GRPO.with_parts(GroupNormalizedEstimator, GSPOLoss).Config
    )


def test_options_of_the_chosen_parts_are_checked_with_their_line(
    manager: PluginManager, tmp_path: Path
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  advantage: rloo\n  scale_rewards_by_std: false\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, FAKES, manager=manager)
    assert f"{path}:3: algorithm.scale_rewards_by_std: unknown key" in str(err.value)
    with pytest.raises(ConfigError, match="no advantage named 'nope'"):
        load_config(None, [*FAKES, "algorithm.advantage=nope"], manager=manager)


def test_an_algorithm_not_built_from_parts_refuses_them(manager: PluginManager) -> None:
    overrides: list[Any] = [*FAKES, "algorithm.name=ppo", "algorithm.advantage=rloo"]
    with pytest.raises(ConfigError, match="algorithm 'ppo' is not built from parts"):
        load_config(None, overrides, manager=manager)
    with pytest.raises(ValueError, match="not built from parts"):
        resolve_algorithm(manager, "ppo", loss="gspo")
