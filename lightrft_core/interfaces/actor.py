"""``Actor``: the policy model being trained, and the modalities it accepts.

Token alignment used everywhere in LightRFT: for ``sequences`` of shape ``[B, T]``,
``log_probs[:, t]`` is ``log p(sequences[:, t + 1] | sequences[:, : t + 1])``, so per-token
outputs have shape ``[B, T - 1]`` and the action mask is ``attention_mask[:, 1:]`` restricted
to response tokens.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch

from .component import Component


class ActorModality(str, Enum):
    """What kind of input an actor accepts besides token ids."""

    LANGUAGE_ONLY = "language"
    VISION_LANGUAGE = "vision-language"
    AUDIO_LANGUAGE = "audio-language"
    OMNI = "omni"


_VISION_INPUTS = frozenset(
    {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"}
)
_AUDIO_INPUTS = frozenset({"input_features", "feature_attention_mask"})

#: The extra ``forward`` keyword inputs each modality accepts (beyond token ids and masks).
MODALITY_PARAMETERS: Mapping[ActorModality, frozenset[str]] = {
    ActorModality.LANGUAGE_ONLY: frozenset(),
    ActorModality.VISION_LANGUAGE: _VISION_INPUTS,
    ActorModality.AUDIO_LANGUAGE: _AUDIO_INPUTS,
    ActorModality.OMNI: _VISION_INPUTS | _AUDIO_INPUTS,
}


#: Files that mark a model folder with a processor (``AutoProcessor``) besides its tokenizer.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def text_trunk_inputs(sequences: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    """A text model's trunk inputs for right-padded rows: ids, mask and positions counting
    the real tokens from 0."""
    mask = attention_mask.to(sequences.device).long()
    return {
        "input_ids": sequences,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
    }


@dataclass
class ActorOutput:
    """What ``Actor.forward`` returns.

    ``log_probs``: ``[B, T-1]`` float32, log-prob of each next token (see module docstring).
    ``entropy``: ``[B, T-1]`` float32 entropy of the next-token distribution, or ``None``
    when not requested.
    """

    log_probs: torch.Tensor
    entropy: torch.Tensor | None = None


class Actor(torch.nn.Module, Component):
    """A policy: wraps a causal LM and returns per-token log-probs of given tokens.

    Called by the training loop (to score rollouts and to compute the loss with gradients)
    and, for the reference policy, without gradients.
    """

    kind: ClassVar[str] = "actor"
    #: The modality this actor accepts; the trainer passes only the matching extra inputs.
    modality: ClassVar[ActorModality] = ActorModality.LANGUAGE_ONLY
    #: Whether ``forward`` reads packed rows (``position_ids``) with media: the media in the
    #: order their sequences appear in the rows, row by row (``trainer.packing``). A
    #: text-only actor always reads packed rows.
    packs_media: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        torch.nn.Module.__init__(self)
        Component.__init__(self, config)

    @abstractmethod
    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        return_entropy: bool = False,
        **modal_inputs: Any,
    ) -> ActorOutput:
        """Per-token log-probs of ``sequences`` (``[B, T]`` int64) under the policy.

        ``attention_mask``: ``[B, T]`` (1 = real token). With sample packing several
        sequences share a row and ``position_ids`` restart at 0 for each of them; attention
        must then stay inside each sequence. ``modal_inputs`` holds only keys from
        ``get_supported_parameters()``. Must not materialise a full-vocabulary fp32
        log-softmax for the whole batch at once.
        """

    def get_supported_parameters(self) -> frozenset[str]:
        """The extra ``forward`` inputs this actor accepts; the trainer asks before calling."""
        return MODALITY_PARAMETERS[self.modality]

    def select_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of ``inputs`` that ``forward`` accepts as ``modal_inputs``."""
        supported = self.get_supported_parameters()
        return {k: v for k, v in inputs.items() if k in supported and v is not None}

    @classmethod
    def hf_path(cls, config: Any) -> str | None:
        """The Hugging Face model folder this actor loads with the options ``config`` (the
        run's tokenizer and an engine's own copy of the policy come from it), or ``None``
        when it loads none. The default is ``None``."""
        return None

    @classmethod
    def load_processor(cls, path: str) -> Any:
        """The processor of the model folder ``path`` that turns prompts with images into
        token ids and tensors (``AutoProcessor``), or ``None`` for a model without one. The
        default loads ``AutoProcessor`` when the folder holds a processor config
        (``processor_config.json`` or ``preprocessor_config.json``); an actor overrides it
        where its family's processor needs more (e.g. a missing optional backend)."""
        if not any((Path(path) / name).is_file() for name in PROCESSOR_FILES):
            return None
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]

    @abstractmethod
    def hf_model(self) -> torch.nn.Module:
        """The Hugging Face model this actor wraps (its peft wrapper when LoRA is on): what
        ``strategy.export_hf`` saves at the end of a run and what an engine that shares the
        trainer's module (``hf``) generates with."""

    @classmethod
    def trunk_inputs(
        cls,
        trunk: torch.nn.Module,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        **modal_inputs: Any,
    ) -> dict[str, Any]:
        """The keyword inputs with which ``trunk`` -- a network of this actor's architecture
        without the output head (``trunk()``, or what ``load_trunk`` loads for a separate
        critic or a reward model) -- reads right-padded rows: token ids (or embeddings),
        mask, positions, and the rows' media (``modal_inputs``, from
        ``get_supported_parameters``) in the form the model wants. The critic calls it
        inside its forward, so it sees what the policy sees. The default is a text model's:
        ``input_ids``, ``attention_mask`` and positions counting the real tokens from 0; an
        actor whose model needs more (3-D rotary positions of images, a vision pass on every
        rank) overrides it. A class method: it reads only ``trunk`` (and its config), so a
        scalar reward model of this architecture uses it without building the actor."""
        return {**text_trunk_inputs(sequences, attention_mask), **modal_inputs}

    @classmethod
    def trunk_hidden_states(cls, trunk: torch.nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The last hidden states ``[B, T, H]`` of ``trunk`` reading ``inputs`` (what
        ``trunk_inputs`` built): what a critic's value head and a scalar reward model's score
        head read. The default calls ``trunk(**inputs)`` and takes its ``last_hidden_state``;
        an actor whose trunk keeps its decoder one level down (a model with its head, whose
        encoders live beside the decoder) overrides it."""
        hidden: torch.Tensor = trunk(**inputs, use_cache=False).last_hidden_state
        return hidden

    def trunk(self) -> torch.nn.Module:
        """The trunk of this actor's model, LoRA adapters included: the network without the
        output head that ``trunk_inputs`` feeds and ``trunk_hidden_states`` reads -- what a
        ``shared`` critic puts its value head on. The default is ``hf_model().base_model``
        (transformers' model without its head); an actor whose model is wrapped (peft) or
        whose trunk is another part overrides it."""
        model: Any = self.hf_model()
        trunk: torch.nn.Module = model.base_model
        return trunk

    @classmethod
    def load_trunk(cls, path: str, **options: Any) -> torch.nn.Module:
        """A trunk of this actor's architecture (what ``trunk`` returns) loaded from the
        folder ``path`` with every weight of it: the actor's checkpoint (the model with its
        head) or a folder a trunk was saved to (a critic or a scalar reward model,
        ``save_pretrained``). ``options``: ``from_pretrained`` keywords (``dtype``,
        ``attn_implementation``, ``trust_remote_code``). A separate critic and a reward model
        of this architecture load their trunk with it. The default is
        ``AutoModel.from_pretrained`` (a causal LM folder's head is left out); an actor whose
        checkpoint ``AutoModel`` cannot read overrides it."""
        from transformers import AutoModel

        return AutoModel.from_pretrained(path, **options)  # type: ignore[no-any-return]

    @abstractmethod
    def named_weights_for_sync(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every weight an inference engine needs, under the Hugging Face model's
        ``state_dict`` names, full (sharded tensors gathered) and with adapters (LoRA) merged
        in. The loop feeds it to ``InferenceEngine.update_weights`` after each policy update
        (through ``StrategyBase.weights_for_sync``). A collective under data parallel: every
        rank iterates to the end. Leaving a tensor out leaves the engine on stale weights."""

    def gradient_checkpointing_enable(self) -> None:
        """Trade compute for memory; a no-op for actors that do not support it."""
