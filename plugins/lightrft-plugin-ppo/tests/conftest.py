"""Fixtures of this plugin's tests besides the test kit's (``fast_tiny_model_dir`` ...):
a local strategy."""

from __future__ import annotations

import pytest

from lightrft_core.strategies.local import LocalStrategy


@pytest.fixture
def strategy() -> LocalStrategy:
    """The built-in one-process strategy on the CPU."""
    s = LocalStrategy(LocalStrategy.Config(device="cpu"))
    s.setup_distributed()
    return s
