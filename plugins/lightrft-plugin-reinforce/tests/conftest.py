"""Fixtures of this plugin's tests besides the test kit's: a short real training run
(``short_rl_rewards`` of ``lightrft_core.testing.training``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lightrft_core.testing.training import short_rl_rewards


@pytest.fixture
def train_rewards(
    fast_tiny_model_dir: Path, tmp_path: Path
) -> Callable[[str, list[str]], list[float]]:
    """``train_rewards(algorithm, overrides)``: the mean reward of every step of a short run
    with this plugin's ``algorithm`` on the letter task."""
    import lightrft_plugin_reinforce.plugin as plugin

    def run(algorithm: str, overrides: list[str]) -> list[float]:
        return short_rl_rewards(
            plugin, "reinforce", fast_tiny_model_dir, tmp_path, algorithm, overrides
        )

    return run
