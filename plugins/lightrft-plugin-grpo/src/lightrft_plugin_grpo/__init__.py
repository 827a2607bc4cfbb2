"""LightRFT plugin: the GRPO family of algorithms -- ``grpo``, ``dr_grpo``, ``dapo``,
``gspo``, ``gspo_token`` and ``gmpo``.

Importing this package is cheap (no torch); each algorithm lives in its own module
(``grpo.py``, ``dr_grpo.py``, ``dapo.py``, ``gspo.py``, ``gmpo.py``).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
