"""Registration, configuration through the core's loader, version lockstep, cheap import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightrft_core
import lightrft_plugin_reinforce
import lightrft_plugin_reinforce.plugin
from lightrft_core.config import ConfigError, load_config
from lightrft_core.plugins import PluginManager
from lightrft_plugin_reinforce.reinforce_pp import ReinforcePP, ReinforcePPBaseline
from lightrft_plugin_reinforce.rloo import RLOO


def _manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_reinforce.plugin, name="reinforce")
    return pm


def test_plugin_registers_its_three_algorithms() -> None:
    pm = _manager()
    for name, cls in (
        ("reinforce_pp", ReinforcePP),
        ("reinforce_pp_baseline", ReinforcePPBaseline),
        ("rloo", RLOO),
    ):
        assert pm.get_algorithm(name) is cls
        assert pm.component_info("algorithm", name).plugin == "reinforce"


@pytest.mark.parametrize("name", ["reinforce_pp_baseline", "rloo"])
def test_group_estimators_refuse_one_sample_per_prompt(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            None, [f"algorithm.name={name}", "engine.n_samples_per_prompt=1"], manager=_manager()
        )
    assert "n_samples_per_prompt >= 2, got 1" in str(err.value)


def test_reinforce_pp_accepts_one_sample_per_prompt_and_typed_options() -> None:
    cfg = load_config(
        None,
        [
            "algorithm.name=reinforce_pp",
            "engine.n_samples_per_prompt=1",
            "algorithm.gamma=0.99",
            "algorithm.kl_coef=0.02",
        ],
        manager=_manager(),
    )
    options = cfg.algorithm.options
    assert isinstance(options, ReinforcePP.Config)
    assert (options.gamma, options.kl_coef, options.whiten_center) == (0.99, 0.02, True)


def test_bad_options_are_reported_by_the_loader() -> None:
    with pytest.raises(ConfigError, match="gamma must be in"):
        load_config(
            None, ["algorithm.name=reinforce_pp", "algorithm.gamma=1.5"], manager=_manager()
        )
    with pytest.raises(ConfigError, match="gamma"):  # RLOO has no discount
        load_config(None, ["algorithm.name=rloo", "algorithm.gamma=0.5"], manager=_manager())


def test_version_is_in_lockstep_with_the_core() -> None:
    assert lightrft_plugin_reinforce.__version__ == lightrft_core.__version__


@pytest.mark.slow
def test_entry_point_module_does_not_import_torch() -> None:
    code = "import sys, lightrft_plugin_reinforce.plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
