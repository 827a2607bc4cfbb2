"""LightRFT plugin: CPGD (clipped policy gradient optimisation with policy drift).

Importing this package is cheap (no torch); the algorithm lives in ``cpgd.py``.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
