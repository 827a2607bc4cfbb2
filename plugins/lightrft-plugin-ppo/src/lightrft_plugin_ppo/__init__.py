"""LightRFT plugin: PPO with generalized advantage estimation and a critic -- ``ppo``.

Importing this package is cheap (no torch). Modules: ``gae.py`` (token rewards and GAE),
``value_loss.py`` (the clipped value loss) and ``ppo.py`` (the algorithm, its configuration,
its choice of critic and its value loss). The critic's model and training are the core's
(``lightrft_core/trainer/critic.py``).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
