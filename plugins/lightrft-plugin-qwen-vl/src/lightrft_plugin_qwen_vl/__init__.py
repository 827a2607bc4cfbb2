"""LightRFT plugin: the ``qwen_vl`` actor for Qwen2-VL and Qwen2.5-VL (and Qwen3-VL)
vision-language models, and tiny random-weight models of each family for tests
(``tiny.py``, with the pytest fixtures of ``testing.py``).

Importing this package is cheap (no torch).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
