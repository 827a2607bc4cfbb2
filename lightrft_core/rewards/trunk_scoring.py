"""A scalar reward model that reads media: a model's trunk (``Actor.load_trunk``: for a
vision-language or audio-language model, its encoders and decoder) plus a linear score head
read at each row's last real token -- a ``CriticModel`` (``models/critic.py``) scored with
``last_token=True``, saved and loaded as a critic folder.

The rows are encoded by the model's processor (``Actor.load_processor``): the text
``prompt + response`` (the prompt formatted with one placeholder per image and clip) and the
row's images and audio clips, padded on the right. The trunk reads them as the actor class
prepares them (``Actor.trunk_inputs``: positions, media; ``Actor.trunk_hidden_states``). The
same encoding serves training (``lightrft rm``) and scoring (``reward.name: model`` with
``reward.actor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.audio import processor_sampling_rate
from ..interfaces.actor import MODALITY_PARAMETERS, Actor
from ..models.critic import CriticModel, TrunkOptions, is_critic_folder

#: Processor outputs that are not media: the token ids and their mask.
_TOKEN_OUTPUTS = frozenset({"input_ids", "attention_mask"})


@dataclass
class TrunkBatch:
    """Right-padded rows (``input_ids``, ``attention_mask`` ``[B, T]``) and their media,
    every row's items concatenated along dim 0 (``pixel_values``, ``image_grid_thw``...)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    media: dict[str, torch.Tensor]

    def to(self, device: torch.device) -> TrunkBatch:
        return TrunkBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {k: v.to(device) for k, v in self.media.items()},
        )


def reads_images(actor_class: type[Actor]) -> bool:
    """Whether models of ``actor_class``'s architecture take media besides token ids."""
    return bool(MODALITY_PARAMETERS[actor_class.modality])


def encode_with_media(
    processor: Any,
    actor_class: type[Actor],
    texts: Sequence[str],
    images: Sequence[Sequence[Any]],
    audios: Sequence[Sequence[Any]] = (),
) -> TrunkBatch:
    """``texts`` (one placeholder per image and audio) and each text's ``images`` and
    ``audios`` (waveforms at the processor's rate) as the trunk of
    ``actor_class``'s architecture reads them; a text without media adds none."""
    flat = [image for row in images for image in row]
    media: dict[str, Any] = {"images": flat} if flat else {}
    clips = [clip for row in audios for clip in row]
    if clips:
        media.update(audio=clips, sampling_rate=processor_sampling_rate(processor))
    processor.tokenizer.padding_side = "right"
    encoded = processor(
        text=list(texts),
        padding=True,
        add_special_tokens=False,  # the chat template holds the special tokens
        return_tensors="pt",
        **media,
    )
    ids = encoded["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError("every text of the batch is empty; nothing to score")
    keys = MODALITY_PARAMETERS[actor_class.modality]
    media = {
        key: value
        for key, value in encoded.items()
        if key in keys and key not in _TOKEN_OUTPUTS and isinstance(value, torch.Tensor)
    }
    return TrunkBatch(ids, encoded["attention_mask"], media)


def trunk_scores(
    model: torch.nn.Module, actor_class: type[Actor], batch: TrunkBatch
) -> torch.Tensor:
    """``[B]`` float32 scores of ``model`` (a ``CriticModel``, or what a strategy made of
    one) at each row's last real token."""

    def trunk_inputs(trunk: Any) -> dict[str, Any]:
        return actor_class.trunk_inputs(trunk, batch.input_ids, batch.attention_mask, **batch.media)

    return model(batch.input_ids, batch.attention_mask, trunk_inputs=trunk_inputs, last_token=True)


def load_trunk_reward_model(
    path: str, actor_class: type[Actor], options: TrunkOptions | None = None
) -> CriticModel:
    """The reward model ``lightrft rm`` exported to ``path`` (a trunk of ``actor_class``'s
    architecture with a score head)."""
    if not is_critic_folder(path):
        raise ValueError(
            f"{path} holds no score head: a reward model that reads media is the folder "
            "`lightrft rm` exports with a vision- or audio-language model.name "
            "(docs/multimodal.md)"
        )
    return CriticModel.from_pretrained(path, options, actor_class=actor_class)
