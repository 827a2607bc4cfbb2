"""Fixtures of this plugin's tests: a 2-rank stand-in and a short real training run
(both from ``lightrft_core.testing.training``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lightrft_core.testing.training import ThreadGroup, build_fast_tiny_model, short_rl_rewards


@pytest.fixture
def thread_group() -> type[ThreadGroup]:
    return ThreadGroup


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fast_tiny_model(tmp_path_factory.mktemp("tiny-cpgd-model"))


@pytest.fixture
def train_rewards(tiny_model_dir: Path, tmp_path: Path) -> Callable[[str, list[str]], list[float]]:
    """``train_rewards(algorithm, overrides)``: the mean reward of every step of a short run
    with this plugin's ``algorithm`` on the letter task."""
    import lightrft_plugin_cpgd.plugin as plugin

    def run(algorithm: str, overrides: list[str]) -> list[float]:
        return short_rl_rewards(plugin, "cpgd", tiny_model_dir, tmp_path, algorithm, overrides)

    return run
