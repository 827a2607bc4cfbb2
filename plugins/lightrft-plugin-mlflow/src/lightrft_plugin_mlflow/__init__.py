"""LightRFT plugin: the ``mlflow`` tracker (``logging.trackers: [..., mlflow]``).

Importing this package is cheap (``mlflow`` is imported when the tracker starts).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
