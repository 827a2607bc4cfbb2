"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_actors(register: Any) -> None:
    from .actor import QwenAudioActor
    from .omni import QwenOmniActor

    register(QwenAudioActor)
    register(QwenOmniActor)


@hookimpl
def lightrft_register_patches(register: Any) -> None:
    from .position_embedding import AudioPositionEmbeddingPatch

    register(AudioPositionEmbeddingPatch)
