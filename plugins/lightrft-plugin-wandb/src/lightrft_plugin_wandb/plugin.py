"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no wandb."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_trackers(register: Any) -> None:
    from .tracker import WandbTracker

    register(WandbTracker)
