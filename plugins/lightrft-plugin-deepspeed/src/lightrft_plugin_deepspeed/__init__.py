"""LightRFT plugin: the ``deepspeed`` training strategy (ZeRO stage 1, 2 and 3).

Importing this package is cheap (no torch, no deepspeed); the strategy lives in
``strategy.py`` and imports deepspeed only when it is set up.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
