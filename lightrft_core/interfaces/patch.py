"""``ModelPatch``: a named, reversible change to a model library (speed-up or fix).

Registered by name and applied by the actor that needs it -- never at import time.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from .component import Component


class ModelPatch(Component):
    """A monkey patch with ``apply()``/``revert()``; both must be idempotent."""

    kind: ClassVar[str] = "patch"

    @abstractmethod
    def apply(self) -> None:
        """Install the patch (a second call does nothing)."""

    @abstractmethod
    def revert(self) -> None:
        """Restore the original behaviour (a call without ``apply`` does nothing)."""
