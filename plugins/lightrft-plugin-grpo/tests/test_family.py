"""Properties every algorithm of the plugin must have: zero (never NaN) advantages for equal
rewards, group size checked at configuration time, selectable by name with its own options
(exact gradients under accumulation and data parallelism: ``test_conformance.py``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import lightrft_plugin_grpo.plugin
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import AdvantageInput, AlgorithmContext
from lightrft_core.plugins import PluginManager
from lightrft_plugin_grpo.dapo import DAPO
from lightrft_plugin_grpo.dr_grpo import DrGRPO
from lightrft_plugin_grpo.gmpo import GMPO
from lightrft_plugin_grpo.grpo import GRPO
from lightrft_plugin_grpo.gspo import GSPO, GSPOToken

ALGORITHMS: dict[str, type[GRPO]] = {
    cls.name: cls for cls in (GRPO, DrGRPO, DAPO, GSPO, GSPOToken, GMPO)
}


# ---------------------------------------------------------------------- advantages
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("reward", [0.0, 1.0, 0.1, 0.7])
def test_equal_rewards_give_zero_advantage_never_nan(name: str, reward: float) -> None:
    # Two groups of 4 equal rewards, responses of different lengths (1 to 4 tokens of 6).
    # DAPO's shaping: L_max = 6, L_buf = 2, no response longer than 4 -> no penalty.
    lengths = torch.tensor([4, 1, 3, 2, 4, 4, 1, 2])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    algo = ALGORITHMS[name]()
    algo.setup(AlgorithmContext(max_new_tokens=6))
    out = algo.compute_advantages(AdvantageInput(torch.full((8,), reward), mask, group_size=4))
    assert not torch.isnan(out.advantages).any()
    assert torch.equal(out.advantages, torch.zeros(8, 6))
    assert out.metrics["zero_std_group_fraction"] == 1.0


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_group_size_one_is_refused_by_the_estimator(name: str) -> None:
    algo = ALGORITHMS[name]()
    algo.setup(AlgorithmContext(max_new_tokens=4))
    with pytest.raises(ValueError, match="group_size >= 2"):
        algo.compute_advantages(
            AdvantageInput(torch.tensor([1.0, 0.0]), torch.ones(2, 1, dtype=torch.bool), 1)
        )


# ---------------------------------------------------------------------- configuration
FAKES = ["model.name=fake", "strategy.name=fake", "engine.name=fake", "reward.name=constant"]


@pytest.fixture
def manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    return pm


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_a_single_sample_per_prompt_is_refused_at_validation(name: str, manager) -> None:
    assert ALGORITHMS[name].requires_groups
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [*FAKES, f"algorithm.name={name}", "engine.n_samples_per_prompt=1"],
            manager=manager,
        )
    assert f"algorithm '{name}'" in str(info.value)
    assert "needs n_samples_per_prompt >= 2, got 1" in str(info.value)


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("dr_grpo", ["algorithm.max_tokens_norm=512"], {"max_tokens_norm": 512}),
        (
            "dapo",
            ["algorithm.overlong_buffer=64", "algorithm.dynamic_sampling=false"],
            {
                "overlong_buffer": 64,
                "dynamic_sampling": False,
                "clip_eps_high": 0.28,
            },
        ),
        ("gspo", ["algorithm.clip_eps_high=0.001"], {"clip_eps_high": 0.001}),
        (
            "gspo_token",
            ["algorithm.high_entropy_token_fraction=0.2"],
            {"high_entropy_token_fraction": 0.2},
        ),
        ("gmpo", ["algorithm.entropy_coef=0.001"], {"entropy_coef": 0.001, "clip_eps_low": 0.4}),
    ],
)
def test_selectable_by_name_with_its_own_options(
    name: str, overrides: list[str], expected: dict[str, Any], manager
) -> None:
    cfg = load_config(None, [*FAKES, f"algorithm.name={name}", *overrides], manager=manager)
    options = cfg.algorithm.options
    assert isinstance(options, ALGORITHMS[name].Config)
    for key, value in expected.items():
        assert getattr(options, key) == value, key


def test_an_option_of_another_algorithm_is_refused(manager) -> None:
    with pytest.raises(ConfigError, match="algorithm.overlong_buffer: unknown key"):
        load_config(
            None, [*FAKES, "algorithm.name=gspo", "algorithm.overlong_buffer=4"], manager=manager
        )


def test_a_bad_value_is_reported_with_its_key(manager) -> None:
    with pytest.raises(ConfigError, match="gmpo has no dual clip"):
        load_config(None, [*FAKES, "algorithm.name=gmpo", "algorithm.dual_clip=2"], manager=manager)
