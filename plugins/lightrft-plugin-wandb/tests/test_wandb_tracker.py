"""The W&B tracker's options and registration (the real offline run is in
tests/test_trackers.py)."""

from __future__ import annotations

import pytest

from lightrft_core.plugins import PluginManager
from lightrft_plugin_wandb.tracker import WandbOptions, WandbTracker


def test_a_bad_mode_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="mode must be one of online, offline, disabled"):
        WandbOptions(mode="ofline")


def test_the_entry_point_registers_the_tracker() -> None:
    import lightrft_plugin_wandb.plugin

    manager = PluginManager(builtins=False, autoload=False)
    manager.register(lightrft_plugin_wandb.plugin, name="wandb")
    assert manager.get_tracker("wandb") is WandbTracker
