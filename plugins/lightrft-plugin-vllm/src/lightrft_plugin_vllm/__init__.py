"""LightRFT plugin: the ``vllm`` rollout engine.

Importing this package is cheap: ``vllm`` is imported only when an engine is set up
(``VLLMEngine.setup``), so the plugin can be listed and configured without vLLM installed.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
