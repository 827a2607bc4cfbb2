"""LightRFT plugin: the ``fsdp`` strategy (PyTorch FSDP2) for training under ``torchrun``.

Importing this package is cheap (no torch); the strategy lives in ``strategy.py``.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
