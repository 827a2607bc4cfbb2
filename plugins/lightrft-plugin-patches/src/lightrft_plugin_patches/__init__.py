"""LightRFT plugin: model patches, applied by name (``model.patches``) and never at import.

The first is ``ulysses_attention``: Ulysses sequence parallelism for the Llama and Qwen2
attention (``ulysses.py``), used by ``sequence_parallel.sequence_parallel_forward``.
Importing this package is cheap (no torch).
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
