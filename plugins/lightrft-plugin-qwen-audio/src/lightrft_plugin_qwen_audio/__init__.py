"""LightRFT plugin: the ``qwen_audio`` actor for Qwen2-Audio audio-language models, the
FSDP-safe position embedding of its audio encoder (a ``ModelPatch``), and a tiny
random-weight Qwen2-Audio for tests (``tiny.py``, with the pytest fixtures of ``testing.py``).

Importing this package is cheap (no torch).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
