"""``qwen_vl``: the actor for Qwen2-VL, Qwen2.5-VL and Qwen3-VL models.

A micro-batch is right-padded token rows whose image placeholders are already expanded (the
processor's ids) plus the images of all its rows collated along dim 0 (``pixel_values``
``[patches, D]``, ``image_grid_thw`` ``[images, 3]``, rows in order; text-only rows add
nothing). The model's own ``get_rope_index`` turns the ids, grids and attention mask into the
3-D rotary positions; log-probs come from the last hidden state, the output head applied chunk
by chunk (``lightrft_core.actors.logprobs``), so the ``[B, T, V]`` logits never exist at once.

Sample packing (``position_ids`` given: several sequences per row, positions restarting at
0): the images come in the order their sequences appear in the rows (row by row, left to
right); each sequence gets the 3-D positions ``get_rope_index`` gives it alone, and
attention stays inside it (flash-attention: the rows as one, no mask; otherwise a
block-diagonal mask, ``lightrft_core/actors/packing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lightrft_core.actors.options import PretrainedActorOptions, load_pretrained
from lightrft_core.actors.packed_rope import packed_mrope_inputs, per_sequence_rope
from lightrft_core.actors.pretrained import PretrainedActor
from lightrft_core.interfaces import ActorModality, ActorOutput

from .vision import with_idle_vision_pass

#: The extra inputs ``forward`` takes: images only (videos are not supported yet).
IMAGE_INPUTS = frozenset({"pixel_values", "image_grid_thw"})
#: ``mm_token_type_ids`` values of image and video tokens (text is 0) for ``get_rope_index``.
IMAGE, VIDEO = 1, 2
#: The name prefix of every vision tower parameter (patch embedding, blocks, merger) in the
#: ``*ForConditionalGeneration`` models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL. LoRA leaves the
#: tower out unless asked for: the vision MLP of Qwen2.5-VL shares its short names
#: (``gate_proj`` ...) with the decoder's.
VISION_PREFIXES = ("model.visual.",)


class QwenVLActor(PretrainedActor):
    """Wraps a transformers Qwen-VL ``*ForConditionalGeneration`` model."""

    name = "qwen_vl"
    modality = ActorModality.VISION_LANGUAGE
    packs_media = True

    @dataclass
    class Config(PretrainedActorOptions):
        """Options of ``model.name: qwen_vl``: the core's options of an actor around a
        Hugging Face model (``lightrft_core/actors/options.py``), then the vision tower's."""

        path: str | None = field(
            default=None,
            metadata={"help": "Hugging Face Qwen2-VL / Qwen2.5-VL / Qwen3-VL model folder."},
        )
        lora_target_modules: list[str] | None = field(
            default=None,
            metadata={
                "help": "Short names of the linear layers LoRA adapts (q_proj ...); null: "
                "every linear layer of the language model except the output head."
            },
        )
        # ------------------------------------------------------------ vision tower
        freeze_vision_tower: bool = field(
            default=False,
            metadata={
                "help": "Train no parameter of the vision tower (patch embedding, blocks, "
                "merger); the language model trains."
            },
        )
        lora_vision_tower: bool = field(
            default=False,
            metadata={
                "help": "Also adapt the vision tower's and merger's linear layers (matching "
                "lora_target_modules); off: LoRA leaves them out."
            },
        )

    def __init__(self, config: Any = None, *, model: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        from transformers import AutoModelForImageTextToText

        model = load_pretrained(AutoModelForImageTextToText, cfg, actor=self.name, model=model)
        self._hold(
            model,
            lora_exclude=() if cfg.lora_vision_tower else VISION_PREFIXES,
            frozen=VISION_PREFIXES if cfg.freeze_vision_tower else (),
        )

    # ---------------------------------------------------------------- model parts
    @classmethod
    def load_processor(cls, path: str) -> Any:
        """The folder's processor; without torchvision, built without its video processor
        (``processing.load_processor``: transformers' Qwen-VL processors otherwise need it)."""
        from .processing import load_processor

        return load_processor(path)

    def trunk(self) -> torch.nn.Module:
        """The ``*Model`` inside (vision tower and decoder, no head)."""
        return self.base_model.model

    def get_supported_parameters(self) -> frozenset[str]:
        return IMAGE_INPUTS

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        return_entropy: bool = False,
        **modal_inputs: Any,
    ) -> ActorOutput:
        """Per-token log-probs ``[B, T-1]`` fp32 of right-padded rows (0 at padding);
        ``modal_inputs``: the rows' images, collated (module docstring). With
        ``position_ids`` (packed rows), positions whose next token starts a new sequence
        are 0 too."""
        base = self.base_model
        inner = base.model  # vision tower + language model, without the output head
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]: both tokens real
        if position_ids is None:
            inputs = self.trunk_inputs(inner, sequences, attention_mask, **modal_inputs)
        else:
            positions = position_ids.to(sequences.device).masked_fill(~mask, 0)  # [B, T]
            valid &= positions[:, 1:] != 0  # do not score across sequence boundaries
            inputs = self.packed_trunk_inputs(inner, sequences, mask, positions, **modal_inputs)
        states = inner(**inputs, use_cache=False).last_hidden_state  # [B, T, H] (or one row)
        states = states.reshape(*sequences.shape, -1)
        return self._scored(
            states, sequences, valid, base.get_output_embeddings(), return_entropy=return_entropy
        )

    @classmethod
    def trunk_inputs(
        cls,
        trunk: Any,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        **modal_inputs: Any,
    ) -> dict[str, Any]:
        """``trunk``'s inputs (a ``*Model``: vision tower + decoder) for right-padded rows:
        ids, mask, the images (checked against the rows' placeholders) and the 3-D rotary
        positions the model computes from the image grids (text-only rows get the plain
        positions on all three axes). Without images, the vision tower still runs on a
        blank image whose output is added times zero (vision.py: every rank runs the same
        modules under sharded strategies)."""
        config = trunk.config
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        images = _check_images(config, sequences, mask, modal_inputs)
        positions, _ = trunk.get_rope_index(  # [3, B, T]
            sequences,
            _token_types(config, sequences),
            image_grid_thw=images.get("image_grid_thw"),
            attention_mask=mask.long(),
        )
        inputs = {
            "input_ids": sequences,
            "attention_mask": mask.long(),
            "position_ids": positions,
            **images,
        }
        return inputs if images else with_idle_vision_pass(trunk, inputs)

    @classmethod
    def packed_trunk_inputs(
        cls,
        trunk: Any,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        **modal_inputs: Any,
    ) -> dict[str, Any]:
        """``trunk_inputs`` for packed rows (module docstring): the positions ``[4, R, L]``
        are the 1-D ``position_ids`` (from which transformers reads the sequence starts)
        then each sequence's own 3-D positions; flash-attention reads the rows as one."""
        config = trunk.config
        mask = attention_mask.bool()  # [R, L]
        images = _check_images(config, sequences, mask, modal_inputs)
        rope = per_sequence_rope(  # [3, R, L]
            lambda ids, own_mask: trunk.get_rope_index(
                ids,
                _token_types(config, ids),
                image_grid_thw=images.get("image_grid_thw"),
                attention_mask=own_mask,
            )[0],
            sequences,
            mask,
            position_ids,
        )
        inputs = packed_mrope_inputs(
            config._attn_implementation,
            ("input_ids", sequences),
            mask,
            position_ids,
            rope,
            trunk.dtype,
        )
        inputs.update(images)
        return inputs if images else with_idle_vision_pass(trunk, inputs)


def _token_types(config: Any, sequences: torch.Tensor) -> torch.Tensor:
    """``get_rope_index``'s ``mm_token_type_ids`` ``[B, T]``: text 0, image and video tokens."""
    token_types = torch.zeros_like(sequences, dtype=torch.int32)
    token_types[sequences == config.image_token_id] = IMAGE
    token_types[sequences == config.video_token_id] = VIDEO
    return token_types


def _check_images(
    config: Any, sequences: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The image inputs, after checking that they come as a pair and that the rows' image
    placeholders are exactly as many as the grids' merged patches."""
    unknown = sorted(set(inputs) - IMAGE_INPUTS)
    if unknown:
        raise ValueError(
            f"actor 'qwen_vl' takes {sorted(IMAGE_INPUTS)} as extra inputs, got {unknown}"
        )
    if not inputs:
        return {}
    if set(inputs) != IMAGE_INPUTS:
        raise ValueError(
            f"actor 'qwen_vl' needs pixel_values and image_grid_thw together, got {sorted(inputs)}"
        )
    merge = config.vision_config.spatial_merge_size
    grids = inputs["image_grid_thw"]
    expected = int((grids.prod(-1) // merge**2).sum())
    placeholders = int(((sequences == config.image_token_id) & mask).sum())
    if placeholders != expected:
        raise ValueError(
            f"the rows hold {placeholders} image placeholder tokens but image_grid_thw "
            f"{grids.tolist()} makes {expected} image tokens: the ids must be the processor's "
            "ids for these images"
        )
    return {"pixel_values": inputs["pixel_values"], "image_grid_thw": grids}
