"""LightRFT plugin: REINFORCE++, REINFORCE++-baseline and RLOO.

Importing this package is cheap (no torch); the algorithms live in ``reinforce_pp.py`` and
``rloo.py``.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
