"""``qwen_audio``: the actor for Qwen2-Audio models (``Qwen2AudioForConditionalGeneration``).

A micro-batch is right-padded token rows whose ``<|AUDIO|>`` placeholders are already
expanded (the processor's ids) plus the clips of all its rows collated along dim 0
(``input_features [clips, mels, frames]``, ``feature_attention_mask [clips, frames]``, rows
in order; text-only rows add nothing). The actor merges the clips' features into the token
embeddings itself (``audio.py``: placeholder counts checked, the encoder run on every
forward), the decoder reads them with plain 1-D positions, and log-probs come from the last
hidden state, the output head applied chunk by chunk (``lightrft_core.actors.logprobs``).
Packed rows (``position_ids`` given; the clips in the order their sequences appear, row by
row) keep attention inside each sequence (``lightrft_core/actors/packing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lightrft_core.actors.options import PretrainedActorOptions, load_pretrained
from lightrft_core.actors.packing import packed_causal_mask
from lightrft_core.actors.pretrained import PretrainedActor
from lightrft_core.interfaces import ActorModality, ActorOutput
from lightrft_core.interfaces.actor import text_trunk_inputs

from .audio import embeddings_with_audio
from .position_embedding import AudioPositionEmbeddingPatch

#: The extra inputs ``forward`` takes.
AUDIO_INPUTS = frozenset({"input_features", "feature_attention_mask"})
#: Name prefixes of the audio encoder's parameters in ``Qwen2AudioForConditionalGeneration``:
#: the Whisper-style tower (convolutions, positions, layers) and the projector into the text
#: width. LoRA leaves them out unless asked for.
AUDIO_PREFIXES = ("model.audio_tower.", "model.multi_modal_projector.")


class QwenAudioActor(PretrainedActor):
    """Wraps a transformers ``Qwen2AudioForConditionalGeneration``."""

    name = "qwen_audio"
    modality = ActorModality.AUDIO_LANGUAGE
    packs_media = True

    @dataclass
    class Config(PretrainedActorOptions):
        """Options of ``model.name: qwen_audio``: the core's options of an actor around a
        Hugging Face model (``lightrft_core/actors/options.py``), then the audio encoder's."""

        path: str | None = field(
            default=None, metadata={"help": "Hugging Face Qwen2-Audio model folder."}
        )
        lora_target_modules: list[str] | None = field(
            default=None,
            metadata={
                "help": "Short names of the linear layers LoRA adapts (q_proj ...); null: "
                "every linear layer of the language model except the output head."
            },
        )
        # ------------------------------------------------------------ audio encoder
        freeze_audio_encoder: bool = field(
            default=False,
            metadata={
                "help": "Train no parameter of the audio encoder (Whisper-style tower and "
                "its projector); the language model trains."
            },
        )
        lora_audio_encoder: bool = field(
            default=False,
            metadata={
                "help": "Also adapt the audio encoder's and projector's linear layers "
                "(matching lora_target_modules); off: LoRA leaves them out."
            },
        )
        fsdp_safe_audio_positions: bool = field(
            default=True,
            metadata={
                "help": "Apply the patch qwen2_audio_position_embedding: the encoder reads its "
                "position embedding through the module, so it works in any FSDP shard unit "
                "(same outputs)."
            },
        )

    def __init__(self, config: Any = None, *, model: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        from transformers import Qwen2AudioForConditionalGeneration

        if cfg.fsdp_safe_audio_positions:
            AudioPositionEmbeddingPatch(AudioPositionEmbeddingPatch.Config()).apply()
        loaded: Qwen2AudioForConditionalGeneration = load_pretrained(
            Qwen2AudioForConditionalGeneration, cfg, actor=self.name, model=model
        )
        # transformers builds the encoder's position table frozen; from_pretrained loses that
        loaded.model.audio_tower.embed_positions.requires_grad_(False)
        self._hold(
            loaded,
            lora_exclude=() if cfg.lora_audio_encoder else AUDIO_PREFIXES,
            frozen=AUDIO_PREFIXES if cfg.freeze_audio_encoder else (),
        )

    # ---------------------------------------------------------------- model parts
    @classmethod
    def load_processor(cls, path: str) -> Any:
        """The folder's ``Qwen2AudioProcessor`` (tokenizer, Whisper feature extractor, chat
        template); it needs no torchaudio."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    def trunk(self) -> torch.nn.Module:
        """The ``Qwen2AudioModel`` inside (audio encoder, projector, decoder; no head)."""
        return self.base_model.model

    @classmethod
    def load_trunk(cls, path: str, **options: Any) -> torch.nn.Module:
        """The ``Qwen2AudioModel`` of ``path``: the ``.model`` of a full Qwen2-Audio folder
        (``AutoModel`` would load none of its decoder weights: their names are laid out for
        the model with its head), or a saved trunk as it is. Its position table is frozen,
        as in the actor."""
        from transformers import AutoConfig, AutoModel, Qwen2AudioForConditionalGeneration

        full = Qwen2AudioForConditionalGeneration.__name__
        if full in (AutoConfig.from_pretrained(path).architectures or []):
            trunk = Qwen2AudioForConditionalGeneration.from_pretrained(path, **options).model
        else:
            trunk = AutoModel.from_pretrained(path, **options)
        trunk.audio_tower.embed_positions.requires_grad_(False)
        return trunk

    def get_supported_parameters(self) -> frozenset[str]:
        return AUDIO_INPUTS

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
        ``modal_inputs``: the rows' clips, collated (module docstring). With
        ``position_ids`` (packed rows), positions whose next token starts a new sequence
        are 0 too."""
        base = self.base_model
        inner = base.model  # audio encoder + language model, without the output head
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]: both tokens real
        inputs = self.trunk_inputs(inner, sequences, attention_mask, **modal_inputs)
        if position_ids is not None:
            positions = position_ids.to(sequences.device).masked_fill(~mask, 0)  # [B, T]
            valid &= positions[:, 1:] != 0  # do not score across sequence boundaries
            inputs = _packed(inner, inputs, mask, positions)
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
        """``trunk``'s inputs (a ``Qwen2AudioModel``: audio encoder + decoder) for
        right-padded rows: the token embeddings with the clips' features merged in (or the
        idle encoder pass without clips, ``audio.py``), the mask and positions counting the
        real tokens from 0."""
        unknown = sorted(set(modal_inputs) - AUDIO_INPUTS)
        if unknown:
            raise ValueError(
                f"actor 'qwen_audio' takes {sorted(AUDIO_INPUTS)} as extra inputs, got {unknown}"
            )
        if modal_inputs and set(modal_inputs) != AUDIO_INPUTS:
            raise ValueError(
                "actor 'qwen_audio' needs input_features and feature_attention_mask together, "
                f"got {sorted(modal_inputs)}"
            )
        inputs = text_trunk_inputs(sequences, attention_mask)
        ids = inputs.pop("input_ids")
        embeddings = embeddings_with_audio(trunk, ids, inputs["attention_mask"], modal_inputs)
        return {**inputs, "input_ids": None, "inputs_embeds": embeddings}


def _packed(
    trunk: Any, inputs: dict[str, Any], mask: torch.Tensor, positions: torch.Tensor
) -> dict[str, Any]:
    """``trunk_inputs`` of packed rows read as packed: the 1-D ``positions`` restarting per
    sequence and attention inside each (flash-attention: the rows as one row, no mask)."""
    impl = trunk.config._attn_implementation or ""
    if impl.startswith("flash_attention"):
        embeddings = inputs["inputs_embeds"]
        return {
            **inputs,
            "inputs_embeds": embeddings.reshape(1, -1, embeddings.shape[-1]),
            "attention_mask": None,
            "position_ids": positions.reshape(1, -1),
        }
    dtype = torch.bool if impl == "sdpa" else inputs["inputs_embeds"].dtype
    mask_4d = packed_causal_mask(positions, mask.long(), dtype=dtype)
    return {**inputs, "attention_mask": mask_4d, "position_ids": positions}
