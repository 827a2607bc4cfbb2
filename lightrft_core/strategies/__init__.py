"""Built-in training strategies: ``local`` (one process, plain PyTorch)."""

from __future__ import annotations

from .local import LocalStrategy

__all__ = ["LocalStrategy"]
