"""The token embeddings of Qwen2-Audio rows with their clips' audio features merged in.

``Qwen2AudioModel.forward`` merges audio into the embeddings itself, but only when given ids
and features; the actor builds the merged embeddings here instead, so that:

- a clip's features go to exactly the rows' ``<|AUDIO|>`` placeholders (checked, with an
  error naming both counts), whatever the rows' padding;
- a forward without audio still runs the audio encoder, on one silent clip whose features
  are added times zero (``lightrft_core/actors/media.py``: every rank of a sharded strategy
  must run the same modules in the same order, text-only micro-batch or not).

The encoder reads ``input_features [n, mels, frames]`` (frames fixed by the model: twice its
``max_source_positions``) and ``feature_attention_mask [n, frames]`` (1 on the clip's frames);
a clip of ``F`` frames gives ``((F - 1) // 2 + 1 - 2) // 2 + 1`` audio tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from lightrft_core.actors.media import features_at_placeholders, silent_clip, with_idle_pass


def audio_features(
    model: Any, input_features: torch.Tensor, feature_attention_mask: torch.Tensor
) -> torch.Tensor:
    """The projected features of every clip's real frames, clips in order: ``[tokens, H]``.
    ``model``: the transformers ``Qwen2AudioModel`` (audio tower, projector, decoder)."""
    from transformers.masking_utils import create_bidirectional_mask

    tower = model.audio_tower
    device = tower.conv1.weight.device
    features = input_features.to(device)
    frames = feature_attention_mask.to(device).sum(-1)  # [n]
    conv_lengths, token_lengths = tower._get_feat_extract_output_lengths(frames)
    positions = (features.shape[-1] - 2) // 2 + 1  # after the stride-2 convolution
    real = torch.arange(positions, device=device)[None, :] < conv_lengths[:, None]  # [n, P]
    mask = create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros(len(real), positions, 1, dtype=tower.dtype, device=device),
        attention_mask=real.long(),
    )
    states = tower(features, attention_mask=mask).last_hidden_state  # [n, P/2, d]
    projected = model.multi_modal_projector(states)  # [n, P/2, H]
    keep = torch.arange(projected.shape[1], device=device)[None, :] < token_lengths[:, None]
    return projected[keep]


def embeddings_with_audio(
    model: Any, input_ids: torch.Tensor, mask: torch.Tensor, audio: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``[B, T, H]`` embeddings of ``input_ids`` with the clips' features at the rows'
    ``<|AUDIO|>`` placeholders (``mask``: real tokens), or plus the idle audio pass when
    ``audio`` is empty."""
    embeddings = model.get_input_embeddings()(input_ids)  # [B, T, H]
    if not audio:  # the idle pass: a silent clip of the full window
        encoder = model.config.audio_config
        clip = silent_clip(encoder.num_mel_bins, 2 * encoder.max_source_positions, input_ids.device)
        return with_idle_pass(embeddings, [audio_features(model, **clip)])
    features = audio_features(model, audio["input_features"], audio["feature_attention_mask"])
    frames = audio["feature_attention_mask"]
    return features_at_placeholders(
        embeddings,
        (input_ids == model.config.audio_token_id) & mask.bool(),  # [B, T]
        features,
        what="audio",
        source=f"the {len(audio['input_features'])} clip(s)",
        note=lambda: f" (feature_attention_mask frames {frames.sum(-1).tolist()})",
    )
