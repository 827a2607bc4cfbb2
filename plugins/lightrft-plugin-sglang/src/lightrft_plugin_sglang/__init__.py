"""LightRFT plugin: the ``sglang`` rollout engine (SGLang's offline ``Engine``).

Importing this package is cheap: ``sglang`` is imported only in ``SGLangEngine.setup``.
Not run on hardware by this project (SGLang needs CUDA); see README.md.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
