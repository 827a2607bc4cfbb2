"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no vllm."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_engines(register: Any) -> None:
    from .engine import VLLMEngine

    register(VLLMEngine)
