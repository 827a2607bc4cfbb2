"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_algorithms(register: Any) -> None:
    from .dapo import DAPO
    from .dr_grpo import DrGRPO
    from .gmpo import GMPO
    from .grpo import GRPO
    from .gspo import GSPO, GSPOToken

    for algorithm in (GRPO, DrGRPO, DAPO, GSPO, GSPOToken, GMPO):
        register(algorithm)
