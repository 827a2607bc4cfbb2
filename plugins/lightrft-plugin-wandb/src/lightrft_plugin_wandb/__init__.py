"""LightRFT plugin: the ``wandb`` tracker (``logging.trackers: [..., wandb]``).

Importing this package is cheap (``wandb`` is imported when the tracker starts).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
