"""LightRFT plugin: PPO with generalized advantage estimation and a critic -- ``ppo``.

Importing this package is cheap (no torch). Modules: ``gae.py`` (token rewards and GAE),
``value_loss.py`` (clipped value loss, explained variance), ``ppo.py`` (the algorithm and its
configuration), ``critic.py`` (the value model) and ``loop_support.py`` (the critic as the
training loop drives it).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
