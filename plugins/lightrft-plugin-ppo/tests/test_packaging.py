"""Registration, configuration through the core's loader, warm-up, lockstep version, cheap
import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightrft_core
import lightrft_plugin_ppo
import lightrft_plugin_ppo.plugin
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import CriticSpec
from lightrft_core.plugins import PluginManager
from lightrft_plugin_ppo.ppo import PPO


def _manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_ppo.plugin, name="ppo")
    return pm


def test_plugin_registers_ppo() -> None:
    pm = _manager()
    assert pm.get_algorithm("ppo") is PPO
    assert pm.component_info("algorithm", "ppo").plugin == "ppo"


def test_ppo_needs_a_critic_and_accepts_one_sample_per_prompt() -> None:
    cfg = load_config(
        None,
        [
            "algorithm.name=ppo",
            "engine.n_samples_per_prompt=1",
            "algorithm.gamma=0.99",
            "algorithm.lam=0.9",
            "algorithm.critic=shared",
            "algorithm.critic_warmup_steps=3",
        ],
        manager=_manager(),
    )
    options = cfg.algorithm.options
    assert isinstance(options, PPO.Config)
    assert (options.gamma, options.lam, options.critic, options.critic_warmup_steps) == (
        0.99,
        0.9,
        "shared",
        3,
    )
    algo = PPO(options)
    assert algo.needs_critic()
    assert not algo.needs_reference()
    assert PPO(PPO.Config(kl_coef=0.01)).needs_reference()


def test_critic_warmup_skips_the_policy_for_the_first_steps() -> None:
    # steps count from 1: with 2 warm-up steps, steps 1 and 2 train only the critic
    algo = PPO(PPO.Config(critic_warmup_steps=2))
    assert [algo.updates_policy(step) for step in (1, 2, 3, 4)] == [False, False, True, True]
    assert PPO(PPO.Config()).updates_policy(1)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("algorithm.lam=1.5", "lam must be in"),
        ("algorithm.gamma=-0.1", "gamma must be in"),
        ("algorithm.critic=both", "critic"),
        ("algorithm.value_clip=0", "value_clip"),
        ("algorithm.critic_warmup_steps=-1", "critic_warmup_steps"),
        ("algorithm.loss_aggregation=seq-mean-token-sum-norm", "max_tokens_norm"),
    ],
)
def test_bad_options_are_reported_by_the_loader(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["algorithm.name=ppo", override], manager=_manager())


def test_a_shared_critic_has_no_path_of_its_own() -> None:
    with pytest.raises(ValueError, match="critic_path"):
        PPO.Config(critic="shared", critic_path="/some/where")


def test_the_critic_spec_is_the_critic_options() -> None:
    assert PPO(PPO.Config()).critic_spec() == CriticSpec("separate", None, 0.0)
    spec = PPO(PPO.Config(critic_path="/c", value_head_init_std=0.1)).critic_spec()
    assert spec == CriticSpec("separate", "/c", 0.1)
    assert PPO(PPO.Config(critic="shared")).critic_spec().layout == "shared"


def test_version_is_in_lockstep_with_the_core() -> None:
    assert lightrft_plugin_ppo.__version__ == lightrft_core.__version__


@pytest.mark.slow
def test_entry_point_module_does_not_import_torch() -> None:
    code = "import sys, lightrft_plugin_ppo.plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
