"""Sample packing with images (``trainer.packing`` on a ``qwen_vl`` actor): packed rows in
the rows' order, each sequence with its own 3-D rotary positions, give the padded run's
log-probs, entropies and gradients (fp32, tiny Qwen2-VL and Qwen3-VL); so do packed
Qwen2-Audio rows with clips (1-D positions; Qwen2.5-Omni's thinker: the plugin's
test_omni.py); an actor that does not read packed media rows is refused at start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightrft_core.actors.packing import pack_padded_rows
from lightrft_core.interfaces import ActorModality
from lightrft_core.testing.packing import assert_packed_equals_padded
from lightrft_core.trainer.micro_batches import check_packing

pytest.importorskip("lightrft_plugin_qwen_vl")

from lightrft_plugin_qwen_vl.actor import QwenVLActor
from lightrft_plugin_qwen_vl.testing import VLRow, make_vl_batch

#: image rows, text-only rows and several images in a row, of very different lengths
ROWS = [VLRow(1, 3), VLRow(2, 1), VLRow(0, 50), VLRow(1, 9), VLRow(0, 2)]
CASES = {
    "qwen2_vl-sdpa": ("tiny_qwen_vl_dir", "sdpa"),
    "qwen2_vl-eager": ("tiny_qwen_vl_dir", "eager"),
    "qwen3_vl-sdpa": ("tiny_qwen3_vl_dir", "sdpa"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_image_rows_equal_the_padded_run(case: str, request: pytest.FixtureRequest) -> None:
    fixture, attn = CASES[case]
    path = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    actor = QwenVLActor(QwenVLActor.Config(path=str(path), attn_implementation=attn))
    batch = make_vl_batch(path, ROWS)
    ids, mask, images = batch.sequences, batch.attention_mask, batch.modal_inputs()
    # in input order, next fit into rows of the longest:
    # (1 image, 2 images) | text | (1 image, text)
    packed = pack_padded_rows(ids, mask, keep_order=True)
    assert [s.row for s in packed.spans] == [0, 0, 1, 2, 2]

    assert_packed_equals_padded(actor, ids, mask, images)


def test_packed_audio_rows_equal_the_padded_run(request: pytest.FixtureRequest) -> None:
    pytest.importorskip("lightrft_plugin_qwen_audio")
    from lightrft_plugin_qwen_audio.actor import QwenAudioActor
    from lightrft_plugin_qwen_audio.testing import AudioRow, make_audio_batch

    path = request.getfixturevalue("tiny_qwen_audio_dir")
    torch.manual_seed(0)
    actor = QwenAudioActor(QwenAudioActor.Config(path=str(path), attn_implementation="sdpa"))
    batch = make_audio_batch(path, [AudioRow(0, 120), AudioRow(1, 3), AudioRow(1, 3)])
    ids, mask = batch.sequences, batch.attention_mask
    # next fit: text | (a clip, a clip)
    assert [s.row for s in pack_padded_rows(ids, mask, keep_order=True).spans] == [0, 1, 1]
    assert_packed_equals_padded(actor, ids, mask, batch.modal_inputs())


def test_actors_without_packed_media_rows_are_refused() -> None:
    vision = SimpleNamespace(
        name="qwen_vl", modality=ActorModality.VISION_LANGUAGE, packs_media=True
    )
    check_packing(True, vision)  # type: ignore[arg-type]
    omni = SimpleNamespace(name="unpacked_omni", modality=ActorModality.OMNI, packs_media=False)
    check_packing(False, omni)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="actor 'unpacked_omni' \\(omni\\) does not read packed"):
        check_packing(True, omni)  # type: ignore[arg-type]
