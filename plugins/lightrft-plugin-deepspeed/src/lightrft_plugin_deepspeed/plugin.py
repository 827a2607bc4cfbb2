"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch,
no deepspeed (the strategy imports deepspeed in ``setup_distributed``)."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_strategies(register: Any) -> None:
    from .strategy import DeepSpeedStrategy

    register(DeepSpeedStrategy)
