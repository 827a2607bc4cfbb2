"""Built-in inference engines: ``hf`` (a transformers causal LM, hand-written sampling)."""

from __future__ import annotations

from .hf import HFEngine

__all__ = ["HFEngine"]
