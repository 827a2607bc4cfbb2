"""Prompts with media in the RL loop: the checks at the start of a run and after each
generation, and the media a model receives for a micro-batch.

The engine generates from each prompt's token ids and media (``generate(...,
multimodal=)``); the rollout keeps every row's media (``RolloutBatch.multimodal``); the
actor, the reference and the critic each get exactly the inputs the actor declares
(``Actor.get_supported_parameters``), the rows' tensors concatenated in row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data.prompts import PromptItem
from ..interfaces import Actor, GenerationOutput, InferenceEngine


def media_keys(items: Sequence[PromptItem]) -> frozenset[str]:
    """The processor tensor names the prompts' media carry (empty: text-only prompts)."""
    return frozenset(
        key for item in items if item.multimodal is not None for key in item.multimodal.tensors
    )


def has_media(items: Sequence[PromptItem]) -> bool:
    """Whether any of the prompts carries media."""
    return any(item.multimodal is not None for item in items)


def check_media_support(
    items: Sequence[PromptItem], engine: InferenceEngine, actor: Actor, *, engine_name: str
) -> None:
    """At the start of a run: prompts with images need an engine that takes media and an
    actor that declares their inputs; one error saying which does not."""
    if not has_media(items):
        return
    if not type(engine).supports_multimodal:
        raise ValueError(
            f"the prompts carry images but engine {engine_name!r} generates from text only "
            "(supports_multimodal is False); use an engine that takes media (engine.name: hf "
            "or vllm), or remove the images from the data"
        )
    missing = media_keys(items) - actor.get_supported_parameters()
    if missing:
        raise ValueError(
            f"the prompts carry images but actor {type(actor).__name__} "
            f"({actor.modality.value}) does not take {sorted(missing)}; use a vision-language "
            "actor (e.g. model.name: qwen_vl), or remove the images from the data"
        )


def generate_kwargs(items: Sequence[PromptItem]) -> dict[str, Any]:
    """The media argument of ``engine.generate`` for these prompts: ``multimodal=`` (one
    entry per prompt) when any has media, nothing for text-only prompts."""
    if not has_media(items):
        return {}
    return {"multimodal": [item.multimodal for item in items]}


def check_prompt_ids(items: Sequence[PromptItem], outputs: Sequence[GenerationOutput]) -> None:
    """The ids an engine generated from (``GenerationOutput.prompt_token_ids``, when it
    built its own) must equal the ids the trainer scores."""
    for out in outputs:
        used = out.prompt_token_ids
        item = items[out.prompt_index]
        if used is None or list(used) == list(item.prompt_ids):
            continue
        first = next(
            (i for i, (a, b) in enumerate(zip(used, item.prompt_ids, strict=False)) if a != b),
            min(len(used), len(item.prompt_ids)),
        )
        raise ValueError(
            f"the engine generated prompt {out.prompt_index} ({item.prompt_text[:60]!r}) from "
            f"{len(used)} token ids but the trainer scores {len(item.prompt_ids)}; they differ "
            f"from position {first} on (engine {list(used[first : first + 8])}, trainer "
            f"{list(item.prompt_ids[first : first + 8])}). The engine's processor and the "
            "run's processor must expand the image placeholders the same way"
        )
