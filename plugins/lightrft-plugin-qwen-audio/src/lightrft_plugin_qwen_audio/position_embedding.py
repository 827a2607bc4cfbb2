"""The FSDP-safe position embedding of the Qwen2-Audio (Whisper-style) audio encoder.

transformers' ``Qwen2AudioEncoder.forward`` adds its learned positions by reading the
embedding's parameter directly (``self.embed_positions.weight``) instead of calling the
``nn.Embedding``. A sharded training strategy gathers a unit's parameters in the unit's
forward hooks, so a parameter read past its module's forward is only right when the module
that reads it is in the same shard unit. With FSDP2 (``fully_shard``) and the embedding in a
unit of its own (e.g. a wrap policy that shards every ``nn.Embedding``), the read returns the
local shard, a ``DTensor``, and the encoder fails with "aten.add.Tensor got mixed
torch.Tensor and DTensor"; FSDP1 gives a flat shard of the wrong shape. (With LightRFT's
default FSDP layout -- decoder and encoder layers as units, the rest in the root unit -- the
read happens to work, because the root's parameters are gathered for the whole forward.)

``AudioPositionEmbeddingPatch`` replaces the encoder's forward with one that looks its
positions up through the embedding module (``embed_positions(positions)``), so whatever shard
unit the embedding is in gathers its weight first. The values are the same rows, so outputs
are unchanged; ``revert()`` restores transformers' forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lightrft_core.interfaces import ModelPatch

#: The registered name; the ``qwen_audio`` actor applies it.
PATCH_NAME = "qwen2_audio_position_embedding"


def _encoder_forward(
    self: Any, input_features: torch.Tensor, attention_mask: Any = None, **kwargs: Any
) -> Any:
    """``Qwen2AudioEncoder.forward`` with the positions looked up through the embedding."""
    from transformers.modeling_outputs import BaseModelOutput

    frames = self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
    if input_features.shape[-1] != frames:
        raise ValueError(
            f"the audio encoder takes input features of exactly {frames} frames, got "
            f"{input_features.shape[-1]}: pad the mel features to {frames}"
        )
    weight = self.conv1.weight
    x = input_features.to(dtype=weight.dtype, device=weight.device)
    x = torch.nn.functional.gelu(self.conv1(x))
    x = torch.nn.functional.gelu(self.conv2(x)).permute(0, 2, 1)  # [n, positions, d]
    positions = torch.arange(x.shape[1], device=x.device)
    hidden = x + self.embed_positions(positions)
    hidden = torch.nn.functional.dropout(hidden, p=self.dropout, training=self.training)
    for layer in self.layers:
        if self.training and torch.rand([]) < self.layerdrop:
            continue
        hidden = layer(hidden, attention_mask, **kwargs)
    hidden = self.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
    return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))


class AudioPositionEmbeddingPatch(ModelPatch):
    """Makes ``Qwen2AudioEncoder`` read its positions through ``embed_positions`` (module
    docstring). Class-wide: every Qwen2-Audio encoder of the process, until ``revert()``."""

    name = PATCH_NAME

    @dataclass
    class Config:
        """No options."""

    #: transformers' forward while the patch is applied (``None`` when it is not).
    _original: ClassVar[Any] = None

    @staticmethod
    def _encoder_class() -> Any:
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        return Qwen2AudioEncoder

    @classmethod
    def is_applied(cls) -> bool:
        return cls._original is not None

    def apply(self) -> None:
        from transformers.utils.generic import merge_with_config_defaults
        from transformers.utils.output_capturing import capture_outputs

        cls = type(self)
        if cls._original is not None:
            return
        encoder = self._encoder_class()
        cls._original = encoder.forward
        # the same wrappers as transformers' forward: config defaults, recorded outputs
        encoder.forward = merge_with_config_defaults(capture_outputs(_encoder_forward))

    def revert(self) -> None:
        cls = type(self)
        if cls._original is None:
            return
        self._encoder_class().forward = cls._original
        cls._original = None
