"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_patches(register: Any) -> None:
    from .ulysses import UlyssesAttention

    register(UlyssesAttention)
