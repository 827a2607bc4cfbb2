"""Media in the rollout: each row keeps its prompt's ``MultiModalInputs`` through
``build_rollout``, ``select`` (micro-batches, shuffled chunks) and ``to``; the loop's checks
of media support and of the engine's prompt ids."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightrft_core.data.prompts import PromptItem
from lightrft_core.engines import HFEngine
from lightrft_core.interfaces import GenerationOutput, MultiModalInputs
from lightrft_core.testing.fakes import FakeActor, FakeEngine
from lightrft_core.trainer.experience import build_rollout, shuffled_chunks
from lightrft_core.trainer.multimodal import check_media_support, check_prompt_ids, generate_kwargs


def media(patches: int, value: float) -> MultiModalInputs:
    """``patches`` rows of pixel values, all ``value``, and one image grid."""
    return MultiModalInputs(
        tensors={
            "pixel_values": torch.full((patches, 3), value),
            "image_grid_thw": torch.tensor([[1, patches, 1]]),
        }
    )


PROMPT_MEDIA = [media(2, 1.0), None, media(4, 3.0)]  # 2 patches, text-only, 4 patches


def rollout() -> Any:
    prompt_ids = [[1, 2], [3], [4, 5, 6]]
    outputs = [
        GenerationOutput(
            prompt_index=p, token_ids=[7] * (1 + p + s), log_probs=[-0.5] * (1 + p + s)
        )
        for p in range(3)
        for s in range(2)
    ]
    return build_rollout(
        prompt_ids, outputs, torch.zeros(6), group_size=2, pad_id=0, multimodal=PROMPT_MEDIA
    )


def patch_values(inputs: dict[str, torch.Tensor]) -> list[float]:
    return inputs["pixel_values"][:, 0].tolist() if inputs else []


def test_each_row_keeps_its_prompts_media() -> None:
    batch = rollout()
    assert batch.multimodal == [PROMPT_MEDIA[0]] * 2 + [None] * 2 + [PROMPT_MEDIA[2]] * 2
    # the rows' tensors in row order: 2 + 2 + 0 + 0 + 4 + 4 patches, 4 image grids
    collated = batch.modal_inputs()
    assert patch_values(collated) == [1.0] * 4 + [3.0] * 8
    assert collated["image_grid_thw"][:, 1].tolist() == [2, 2, 4, 4]
    assert batch.modal_inputs(frozenset({"image_grid_thw"})).keys() == {"image_grid_thw"}


def test_select_micro_batches_and_shuffled_chunks_keep_the_rows_media() -> None:
    batch = rollout()
    picked = batch.select([5, 2, 0])
    assert picked.multimodal == [PROMPT_MEDIA[2], None, PROMPT_MEDIA[0]]
    assert patch_values(picked.modal_inputs()) == [3.0] * 4 + [1.0] * 2
    assert batch.select([2, 3]).modal_inputs() == {}  # text-only rows: no media inputs
    generator = torch.Generator().manual_seed(0)
    for chunk in shuffled_chunks(len(batch), 4, generator):
        for rows in chunk.split(1):  # micro-batches of one row
            row = int(rows[0])
            assert batch.select(rows).multimodal == [batch.multimodal[row]]


def test_to_moves_the_media_and_text_batches_carry_none() -> None:
    moved = rollout().to(torch.device("meta"))
    assert moved.sequences.device.type == "meta"
    assert all(m is None or m.tensors["pixel_values"].is_meta for m in moved.multimodal)
    text = build_rollout([[1]], [GenerationOutput(0, [2])], torch.zeros(1), group_size=1, pad_id=0)
    assert text.multimodal is None and text.select([0]).multimodal is None
    assert text.to(torch.device("meta")).multimodal is None


# ---------------------------------------------------------------------- the loop's checks
def items(with_image: bool) -> list[PromptItem]:
    item = PromptItem("look", [1, 2, 3], multimodal=media(2, 1.0) if with_image else None)
    return [PromptItem("text", [4, 5]), item]


def test_text_engines_and_actors_are_refused_for_image_data() -> None:
    text_actor = FakeActor()  # a language-only actor
    engine = HFEngine()
    check_media_support(items(False), FakeEngine(), text_actor, engine_name="fake")
    with pytest.raises(ValueError, match="engine 'fake' generates from text only"):
        check_media_support(items(True), FakeEngine(), text_actor, engine_name="fake")
    with pytest.raises(ValueError, match=r"does not take \['image_grid_thw', 'pixel_values'\]"):
        check_media_support(items(True), engine, text_actor, engine_name="hf")


def test_generate_kwargs_and_prompt_id_check() -> None:
    assert generate_kwargs(items(False)) == {}
    with_image = items(True)
    assert generate_kwargs(with_image) == {"multimodal": [None, with_image[1].multimodal]}
    check_prompt_ids(
        with_image, [GenerationOutput(1, [9]), GenerationOutput(1, [9], prompt_token_ids=[1, 2, 3])]
    )
    with pytest.raises(
        ValueError,
        match=r"prompt 1 \('look'\) from 4 token ids but the trainer scores 3; they differ "
        r"from position 2 on",
    ):
        check_prompt_ids(with_image, [GenerationOutput(1, [9], prompt_token_ids=[1, 2, 7, 7])])
