"""A text-only forward runs the vision tower on a blank image (``vision.py``): the log-probs
do not change, every vision parameter gets a zero gradient, and the tower runs before the
decoder layers, as in a forward with images -- what sharded strategies need (every rank the
same modules in the same order)."""

from __future__ import annotations

from pathlib import Path

import torch

from lightrft_core.actors.media import blank_grid_image
from lightrft_plugin_qwen_vl.actor import QwenVLActor
from lightrft_plugin_qwen_vl.testing import VLRow, make_vl_batch


def make_actor(path: Path, **options: object) -> QwenVLActor:
    return QwenVLActor(QwenVLActor.Config(path=str(path), attn_implementation="eager", **options))


def test_the_blank_image_is_one_merged_token(tiny_qwen_vl_dir: Path) -> None:
    config = make_actor(tiny_qwen_vl_dir).base_model.config.vision_config
    blank = blank_grid_image(config, torch.device("cpu"))
    # merge 2: a 2x2 grid of patches; each patch 3 channels x 2 frames x 14 x 14 pixels
    assert blank["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert blank["pixel_values"].shape == (4, 3 * 2 * 14 * 14)
    assert not blank["pixel_values"].any()


def test_text_only_rows_score_as_without_the_tower_and_train_it_by_zero(family_dir: Path) -> None:
    actor = make_actor(family_dir)
    batch = make_vl_batch(family_dir, [VLRow(0, 4), VLRow(0, 7)])
    out = actor(batch.sequences, batch.attention_mask)
    with torch.no_grad():  # the HF model's own text-only forward (no vision tower)
        logits = actor.base_model(
            input_ids=batch.sequences, attention_mask=batch.attention_mask
        ).logits[:, :-1]
        expected = logits.log_softmax(-1).gather(-1, batch.sequences[:, 1:, None])[..., 0]
    valid = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
    assert torch.allclose(out.log_probs[valid], expected[valid], atol=1e-5, rtol=0)
    out.log_probs.sum().backward()
    vision = {n: p.grad for n, p in actor.named_parameters() if "visual" in n}
    assert vision and all(g is not None and not g.any() for g in vision.values())
    language = [p.grad for n, p in actor.named_parameters() if "language_model.layers" in n]
    assert all(g is not None for g in language) and any(g.any() for g in language)


def test_the_tower_runs_before_the_decoder_layers_with_or_without_images(
    tiny_qwen_vl_dir: Path,
) -> None:
    actor = make_actor(tiny_qwen_vl_dir)
    order: list[str] = []
    for name, module in actor.base_model.named_modules():
        if name.endswith(("visual.blocks.0", "language_model.layers.0")):
            module.register_forward_hook(lambda m, a, o, name=name: order.append(name))
    for rows in ([VLRow(1, 3)], [VLRow(0, 3)]):
        batch = make_vl_batch(tiny_qwen_vl_dir, rows)
        order.clear()
        actor(batch.sequences, batch.attention_mask, **batch.modal_inputs())
        assert order == ["model.visual.blocks.0", "model.language_model.layers.0"], rows


def test_a_frozen_tower_still_runs_without_gradients(tiny_qwen_vl_dir: Path) -> None:
    actor = make_actor(tiny_qwen_vl_dir, freeze_vision_tower=True)
    calls: list[int] = []
    actor.base_model.model.visual.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    batch = make_vl_batch(tiny_qwen_vl_dir, [VLRow(0, 5)])
    actor(batch.sequences, batch.attention_mask).log_probs.sum().backward()
    assert calls == [1]  # sharded, its blocks are still gathered on every rank
    assert all(p.grad is None for n, p in actor.named_parameters() if "visual" in n)
