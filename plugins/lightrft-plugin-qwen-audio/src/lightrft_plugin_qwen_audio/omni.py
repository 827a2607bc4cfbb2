"""``qwen_omni``: the actor for the thinker of Qwen2.5-Omni models
(``Qwen2_5OmniThinkerForConditionalGeneration``: text, images and audio in, text out; the
talker, which speaks, is not loaded).

A micro-batch is right-padded token rows whose ``<|IMAGE|>`` and ``<|AUDIO|>`` placeholders
are already expanded (the processor's ids) plus the media of all its rows collated along
dim 0 (``pixel_values [patches, D]``, ``image_grid_thw [images, 3]``, ``input_features
[clips, mels, frames]``, ``feature_attention_mask [clips, frames]``; rows in order, text-only
rows add nothing). The actor builds the decoder's input itself:

- the token embeddings with the images' and clips' features at their placeholders (counts
  checked, with an error naming both); a micro-batch without images (or without clips) still
  runs the vision (audio) encoder, on a blank image (silent clip) whose output is added times
  zero, so that every rank of a sharded strategy runs the same modules in the same order
  (as the ``qwen_vl`` and ``qwen_audio`` actors do);
- the thinker's 3-D rotary positions (its ``get_rope_index``: images on a time/height/width
  grid, clips and text on the diagonal), read from the rows' ids with stray media-start
  tokens in responses taken as text (a sampled ``<|audio_bos|>`` or ``<|vision_bos|>`` opens
  no media: the engine decoded it as text).

Sample packing (``position_ids`` given: several sequences per row, positions restarting at
0): the images and clips come in the order their sequences appear in the rows (row by row,
left to right); each sequence gets the 3-D positions ``get_rope_index`` gives it alone, and
attention stays inside it (``lightrft_core/actors/packed_rope.py``).

Log-probs come from the text model's last hidden state, the output head applied chunk by
chunk (``lightrft_core.actors.logprobs``). Videos are not supported yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from lightrft_core.actors.media import (
    blank_grid_image,
    features_at_placeholders,
    silent_clip,
    with_idle_pass,
)
from lightrft_core.actors.options import PretrainedActorOptions, load_pretrained
from lightrft_core.actors.packed_rope import packed_mrope_inputs, per_sequence_rope
from lightrft_core.actors.pretrained import PretrainedActor
from lightrft_core.interfaces import ActorModality, ActorOutput

if TYPE_CHECKING:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

IMAGE_INPUTS = frozenset({"pixel_values", "image_grid_thw"})
AUDIO_INPUTS = frozenset({"input_features", "feature_attention_mask"})
#: The extra inputs ``forward`` takes: images and audio (videos are not supported yet).
OMNI_INPUTS = IMAGE_INPUTS | AUDIO_INPUTS

#: Name prefixes of the media encoders' parameters in the thinker.
VISION_PREFIXES = ("visual.",)
AUDIO_PREFIXES = ("audio_tower.",)


class QwenOmniActor(PretrainedActor):
    """Wraps a transformers ``Qwen2_5OmniThinkerForConditionalGeneration``."""

    name = "qwen_omni"
    modality = ActorModality.OMNI
    packs_media = True

    @dataclass
    class Config(PretrainedActorOptions):
        """Options of ``model.name: qwen_omni``: the core's options of an actor around a
        Hugging Face model (``lightrft_core/actors/options.py``), then the encoders'."""

        path: str | None = field(
            default=None,
            metadata={"help": "Hugging Face Qwen2.5-Omni thinker folder."},
        )
        lora_target_modules: list[str] | None = field(
            default=None,
            metadata={
                "help": "Short names of the linear layers LoRA adapts (q_proj ...); null: "
                "every linear layer of the language model except the output head."
            },
        )
        # ------------------------------------------------------------ media encoders
        freeze_vision_encoder: bool = field(
            default=False,
            metadata={"help": "Train no parameter of the vision encoder (and its merger)."},
        )
        freeze_audio_encoder: bool = field(
            default=False,
            metadata={"help": "Train no parameter of the audio encoder (and its projection)."},
        )
        lora_encoders: bool = field(
            default=False,
            metadata={
                "help": "Also adapt the vision and audio encoders' linear layers (matching "
                "lora_target_modules); off: LoRA leaves them out."
            },
        )

    def __init__(self, config: Any = None, *, model: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        model = load_pretrained(
            Qwen2_5OmniThinkerForConditionalGeneration, cfg, actor=self.name, model=model
        )
        self._hold(
            model,
            lora_exclude=() if cfg.lora_encoders else VISION_PREFIXES + AUDIO_PREFIXES,
            frozen=(VISION_PREFIXES if cfg.freeze_vision_encoder else ())
            + (AUDIO_PREFIXES if cfg.freeze_audio_encoder else ()),
        )

    # ---------------------------------------------------------------- model parts
    @classmethod
    def load_processor(cls, path: str) -> Any:
        """The folder's ``Qwen2_5OmniProcessor``; without torchvision, built without its
        video processor (``omni_processing.py``)."""
        from .omni_processing import load_omni_processor

        return load_omni_processor(path)

    def trunk(self) -> torch.nn.Module:
        """The thinker itself: its encoders sit beside its decoder (``thinker.model``), so
        the trunk is the whole thinker, read through ``trunk_hidden_states`` (its output
        head unused)."""
        return self.base_model

    @classmethod
    def load_trunk(cls, path: str, **options: Any) -> torch.nn.Module:
        """The thinker of ``path`` (a thinker folder: the actor's or a critic's)."""
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, **options)

    @classmethod
    def trunk_hidden_states(cls, trunk: torch.nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The last hidden states ``[B, T, H]`` of the thinker's decoder
        (``trunk.model``) reading ``inputs`` (``trunk_inputs``'s)."""
        thinker = cast("Qwen2_5OmniThinkerForConditionalGeneration", trunk)
        return thinker.model(**inputs, use_cache=False).last_hidden_state

    def get_supported_parameters(self) -> frozenset[str]:
        return OMNI_INPUTS

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
        ``modal_inputs``: the rows' images and clips, collated (module docstring). With
        ``position_ids`` (packed rows), positions whose next token starts a new sequence
        are 0 too."""
        thinker = self.base_model
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]: both tokens real
        if position_ids is None:
            inputs = self.trunk_inputs(thinker, sequences, attention_mask, **modal_inputs)
        else:
            positions = position_ids.to(sequences.device).masked_fill(~mask, 0)  # [B, T]
            valid &= positions[:, 1:] != 0  # do not score across sequence boundaries
            inputs = self.packed_trunk_inputs(thinker, sequences, mask, positions, **modal_inputs)
        states = self.trunk_hidden_states(thinker, inputs)  # [B, T, H] (or one row)
        states = states.reshape(*sequences.shape, -1)
        head = thinker.get_output_embeddings()
        return self._scored(states, sequences, valid, head, return_entropy=return_entropy)

    @classmethod
    def trunk_inputs(
        cls,
        trunk: Any,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        **modal_inputs: Any,
    ) -> dict[str, Any]:
        """The inputs of the thinker's (``trunk``'s) text model ``trunk.model`` for
        right-padded rows: the token embeddings with the media merged in (or the idle
        encoder passes), the mask, and the 3-D rotary positions (module docstring)."""
        images, audio = _media(modal_inputs)
        mask = attention_mask.to(sequences.device).long()  # [B, T]
        return {
            "inputs_embeds": _embeddings(trunk, sequences, mask, images, audio),
            "attention_mask": mask,
            "position_ids": _rope_index(trunk, sequences, mask, images, audio),  # [3, B, T]
        }

    @classmethod
    def packed_trunk_inputs(
        cls,
        trunk: Any,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        **modal_inputs: Any,
    ) -> dict[str, Any]:
        """``trunk_inputs`` for packed rows: the same embeddings, each sequence's own 3-D
        positions after the 1-D ones, attention inside each (``packed_mrope_inputs``)."""
        images, audio = _media(modal_inputs)
        mask = attention_mask.to(sequences.device).long()  # [R, L]
        embeddings = _embeddings(trunk, sequences, mask, images, audio)  # [R, L, H]
        rope = per_sequence_rope(  # [3, R, L]
            lambda ids, own_mask: _rope_index(trunk, ids, own_mask, images, audio),
            sequences,
            mask.bool(),
            position_ids,
        )
        return packed_mrope_inputs(
            trunk.config._attn_implementation,
            ("inputs_embeds", embeddings),
            mask,
            position_ids,
            rope,
            embeddings.dtype,
        )


def _media(inputs: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The images' and the clips' inputs (each both keys, or neither)."""
    unknown = sorted(set(inputs) - OMNI_INPUTS)
    if unknown:
        raise ValueError(
            f"actor 'qwen_omni' takes {sorted(OMNI_INPUTS)} as extra inputs, got {unknown}"
        )
    return _pair(inputs, IMAGE_INPUTS), _pair(inputs, AUDIO_INPUTS)


def _embeddings(
    trunk: Any,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    images: dict[str, torch.Tensor],
    audio: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The token embeddings ``[B, T, H]`` with the images' and clips' features merged in."""
    embeddings = trunk.get_input_embeddings()(sequences)  # [B, T, H]
    embeddings = _with_images(trunk, sequences, mask, embeddings, images)
    return _with_audio(trunk, sequences, mask, embeddings, audio)


def _rope_index(
    trunk: Any,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    images: dict[str, torch.Tensor],
    audio: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The thinker's 3-D rotary positions ``[3, B, T]`` of right-padded rows whose media
    come in row order."""
    positions, _ = trunk.get_rope_index(
        _media_structure_ids(trunk.config, sequences),
        image_grid_thw=images.get("image_grid_thw"),
        attention_mask=mask.long(),
        audio_seqlens=audio["feature_attention_mask"].sum(-1) if audio else None,
    )
    return positions


def _pair(inputs: dict[str, Any], keys: frozenset[str]) -> dict[str, torch.Tensor]:
    """The inputs of one medium (both keys, or neither)."""
    given = {k: v for k, v in inputs.items() if k in keys}
    if given and set(given) != keys:
        raise ValueError(f"actor 'qwen_omni' needs {sorted(keys)} together, got {sorted(given)}")
    return given


def _with_images(
    thinker: Any,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    embeddings: torch.Tensor,
    images: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The images' features at the ``<|IMAGE|>`` placeholders; without images, plus the
    vision encoder's output on a blank image times zero."""
    if not images:
        blank = blank_grid_image(thinker.config.vision_config, sequences.device)
        features = thinker.get_image_features(**blank, return_dict=True).pooler_output
        return with_idle_pass(embeddings, features)
    out = thinker.get_image_features(
        images["pixel_values"], images["image_grid_thw"], return_dict=True
    )
    slots = (sequences == thinker.config.image_token_id) & mask.bool()  # [B, T]
    features = torch.cat(out.pooler_output)  # [image tokens, H]
    return features_at_placeholders(
        embeddings, slots, features, what="image", source="the image inputs"
    )


def _with_audio(
    thinker: Any,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    embeddings: torch.Tensor,
    audio: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The clips' features at the ``<|AUDIO|>`` placeholders; without clips, plus the audio
    encoder's output on a silent clip times zero."""
    encoder = thinker.config.audio_config
    # without clips: one all-zero clip of one encoder chunk (2 * n_window frames)
    clips = audio or silent_clip(encoder.num_mel_bins, 2 * encoder.n_window, sequences.device)
    features = thinker.get_audio_features(
        clips["input_features"], clips["feature_attention_mask"], return_dict=True
    ).last_hidden_state  # [audio tokens, H]
    if not audio:
        return with_idle_pass(embeddings, [features])
    slots = (sequences == thinker.config.audio_token_id) & mask.bool()  # [B, T]
    return features_at_placeholders(
        embeddings, slots, features, what="audio", source="the audio inputs"
    )


def _media_structure_ids(config: Any, sequences: torch.Tensor) -> torch.Tensor:
    """``sequences`` with every media-start token that opens no media (a ``<|vision_bos|>``
    not followed by an image or video placeholder, an ``<|audio_bos|>`` not followed by an
    audio placeholder: text a response sampled) replaced by -1, an id of no token, which
    the thinker's ``get_rope_index`` reads as text (these ids are never embedded)."""
    following = torch.cat([sequences[:, 1:], torch.full_like(sequences[:, :1], -1)], dim=1)
    opens_image = (following == config.image_token_id) | (following == config.video_token_id)
    stray = ((sequences == config.vision_start_token_id) & ~opens_image) | (
        (sequences == config.audio_start_token_id) & (following != config.audio_token_id)
    )
    return sequences.masked_fill(stray, -1)
