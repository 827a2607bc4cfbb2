"""``language``: the built-in actor, any Hugging Face causal language model.

Log-probs are computed from the decoder's last hidden state, applying the output head
chunk by chunk (``logprobs.py``), so the ``[B, T, V]`` logits are never materialised.
Sample packing: when ``position_ids`` are given, attention is confined to each sequence,
by flash-attention's variable-length path, SDPA run per sequence (``varlen_attention.py``)
or a block-diagonal 4-D mask (eager; ``packing.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from ..interfaces import ActorModality, ActorOutput
from .options import PretrainedActorOptions, load_pretrained
from .packing import packed_causal_mask
from .pretrained import PretrainedActor
from .varlen_attention import check_segments_read, packed_text_inputs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger("lightrft.actor")


def find_lora_target_modules(model: torch.nn.Module) -> list[str]:
    """Short names of every linear layer of ``model`` except its output head (sorted)."""
    from transformers.pytorch_utils import Conv1D

    hf_model = cast("PreTrainedModel", model)
    head = hf_model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is head}
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    }
    return sorted(names - head_names - {"lm_head"})


def output_logits_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The output head plus the logit post-processing some architectures apply."""
    hf_model = cast("PreTrainedModel", model)
    head = hf_model.get_output_embeddings()
    config = hf_model.config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
    divide = getattr(config, "logits_scaling", None)  # Granite
    multiply = getattr(config, "logit_scale", None)  # Cohere

    def logits(hidden: torch.Tensor) -> torch.Tensor:  # [n, H] -> [n, V]
        out = head(hidden)
        if multiply is not None:
            out = out * multiply
        if divide is not None:
            out = out / divide
        if softcap is not None:
            out = torch.tanh(out / softcap) * softcap
        return out

    return logits


class ActorLanguage(PretrainedActor):
    """Wraps a transformers causal LM (from a folder or an existing model object)."""

    name = "language"
    modality = ActorModality.LANGUAGE_ONLY

    @dataclass
    class Config(PretrainedActorOptions):
        """Options of ``model.name: language`` (``lightrft_core/actors/options.py``)."""

    def __init__(self, config: Any = None, *, model: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        from transformers import AutoModelForCausalLM

        model = load_pretrained(AutoModelForCausalLM, cfg, actor=self.name, model=model)
        if cfg.lora_rank > 0:
            model = self._add_lora(model)
        self.model = model
        if cfg.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    # ---------------------------------------------------------------- model parts
    def trunk(self) -> torch.nn.Module:
        """The decoder without its head (LoRA adapters included), e.g. ``Qwen2Model``."""
        trunk: torch.nn.Module = self.base_model.base_model
        return trunk

    def _add_lora(self, model: torch.nn.Module) -> Any:
        targets = self.config.lora_target_modules or find_lora_target_modules(model)
        if not targets:
            raise ValueError("no linear layer found for LoRA; set actor.lora_target_modules")
        return self._with_lora(model, list(targets), task_type="CAUSAL_LM")

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
        """Per-token log-probs ``[B, T-1]`` fp32 (0 where a token is padding).

        With ``position_ids`` (packing), positions whose next token starts a new sequence
        are 0 too.
        """
        if modal_inputs:
            raise ValueError(f"actor 'language' takes no extra inputs, got {sorted(modal_inputs)}")
        base = self.base_model
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]: both tokens real
        if position_ids is None:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
            inputs = {
                "input_ids": sequences,
                "attention_mask": mask.long(),
                "position_ids": positions,
            }
            states, logit_fn = self._states(base, inputs)
        else:
            positions = position_ids.to(sequences.device).masked_fill(~mask, 0)  # [B, T]
            valid &= positions[:, 1:] != 0  # do not score across sequence boundaries
            states, logit_fn = self._packed_states(base, sequences, mask, positions)
        # states [B, T, H] read by the head, or logits [B, T, V] (logit_fn None)
        return self._scored(states, sequences, valid, logit_fn, return_entropy=return_entropy)

    @staticmethod
    def _states(base: Any, inputs: dict[str, Any]) -> Any:
        """Last hidden states ``[B, T, H]`` and the head, or logits ``[B, T, V]`` and None."""
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        if decoder is None or decoder is base or base.get_output_embeddings() is None:
            return base(**inputs, use_cache=False).logits, None  # no separable head
        return decoder(**inputs, use_cache=False).last_hidden_state, output_logits_fn(base)

    def _packed_states(
        self, base: Any, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> Any:
        """``_states`` for packed rows, attention confined to each sequence.

        Flash-attention finds the sequences from ``position_ids`` only in a single row, and
        SDPA runs per sequence on a single row (``varlen_attention.py``), so the rows are
        flattened into one; other kernels get a block-diagonal 4-D mask.
        """
        impl = base.config._attn_implementation or ""
        if impl == "sdpa":
            inputs = packed_text_inputs(tokens, mask, positions)
        elif impl.startswith("flash_attention"):
            flat_positions = positions.reshape(1, -1)
            inputs = {"input_ids": tokens.reshape(1, -1), "position_ids": flat_positions}
            inputs["attention_mask"] = None
        else:
            inputs = {
                "input_ids": tokens,
                "attention_mask": packed_causal_mask(positions, mask, dtype=base.dtype),
                "position_ids": positions,
            }
        states, logit_fn = self._states(base, inputs)
        check_segments_read(inputs, base)
        return states.reshape(*tokens.shape, -1), logit_fn
