"""LightRFT plugin: the GRPO algorithm (and Dr.GRPO as a configuration of it).

Importing this package is cheap (no torch); the algorithm lives in ``grpo.py``.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
