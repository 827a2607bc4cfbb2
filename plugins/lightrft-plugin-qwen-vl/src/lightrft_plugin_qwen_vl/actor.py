"""``qwen_vl``: the actor for Qwen2-VL, Qwen2.5-VL and Qwen3-VL models.

A micro-batch is right-padded token rows whose image placeholders are already expanded (the
processor's ids) plus the images of all its rows collated along dim 0 (``pixel_values``
``[patches, D]``, ``image_grid_thw`` ``[images, 3]``, rows in order; text-only rows add
nothing). The model's own ``get_rope_index`` turns the ids, grids and attention mask into the
3-D rotary positions; log-probs come from the last hidden state, the output head applied chunk
by chunk (``lightrft_core.actors.logprobs``), so the ``[B, T, V]`` logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lightrft_core.actors.logprobs import chunked_token_log_probs
from lightrft_core.actors.options import PretrainedActorOptions, dtype_name, load_pretrained
from lightrft_core.actors.weights import merged_weights
from lightrft_core.interfaces import Actor, ActorModality, ActorOutput

from .lora import is_vision_name, lora_target_names
from .vision import with_idle_vision_pass

#: The extra inputs ``forward`` takes: images only (videos are not supported yet).
IMAGE_INPUTS = frozenset({"pixel_values", "image_grid_thw"})
#: ``mm_token_type_ids`` values of image and video tokens (text is 0) for ``get_rope_index``.
IMAGE, VIDEO = 1, 2


class QwenVLActor(Actor):
    """Wraps a transformers Qwen-VL ``*ForConditionalGeneration`` model."""

    name = "qwen_vl"
    modality = ActorModality.VISION_LANGUAGE

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
        if cfg.lora_rank > 0:
            model = self._add_lora(model)
        self.model = model
        if cfg.freeze_vision_tower:
            for name, parameter in self.base_model.named_parameters():
                if is_vision_name(name):
                    parameter.requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    @classmethod
    def from_model(cls, model: torch.nn.Module, config: Any = None) -> QwenVLActor:
        """Wrap an existing Qwen-VL model; cast to ``config.dtype`` (kept without ``config``).
        With LoRA on, the adapters are injected into ``model`` itself (peft works in place)."""
        if config is None:
            config = cls.Config(dtype=dtype_name(model.dtype))
        return cls(config, model=model)

    # ---------------------------------------------------------------- model parts
    @classmethod
    def hf_path(cls, config: Any) -> str | None:
        return config.path

    @classmethod
    def load_processor(cls, path: str) -> Any:
        """The folder's processor; without torchvision, built without its video processor
        (``processing.load_processor``: transformers' Qwen-VL processors otherwise need it)."""
        from .processing import load_processor

        return load_processor(path)

    def hf_model(self) -> torch.nn.Module:
        """The transformers model, inside its peft wrapper when LoRA is on."""
        return self.model

    @property
    def base_model(self) -> Any:
        """The transformers model (the one inside the peft wrapper when LoRA is on)."""
        return self.model.get_base_model() if self._has_lora else self.model

    def trunk(self) -> torch.nn.Module:
        """The ``*Model`` inside (vision tower and decoder, no head)."""
        return self.base_model.model

    @property
    def _has_lora(self) -> bool:
        return type(self.model).__module__.startswith("peft.")

    def _add_lora(self, model: torch.nn.Module) -> Any:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        targets = lora_target_names(
            model, cfg.lora_target_modules, include_vision=cfg.lora_vision_tower
        )
        if not targets:
            raise ValueError(
                f"no linear layer matches lora_target_modules={cfg.lora_target_modules!r}"
            )
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
        )
        return get_peft_model(model, lora)

    def gradient_checkpointing_enable(self) -> None:
        """Checkpoint every decoder and vision block (non-reentrant); the KV cache off."""
        base = self.base_model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing_disable()

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
        ``modal_inputs``: the rows' images, collated (module docstring)."""
        if position_ids is not None:
            raise ValueError(
                "actor 'qwen_vl' does not support packed rows (position_ids): its 3-D rotary "
                "positions come from the image grids; turn sample packing off"
            )
        base = self.base_model
        inner = base.model  # vision tower + language model, without the output head
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        inputs = self.trunk_inputs(inner, sequences, attention_mask, **modal_inputs)
        states = inner(**inputs, use_cache=False).last_hidden_state  # [B, T, H]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]: both tokens real
        log_probs, entropy = chunked_token_log_probs(
            states[:, :-1][valid],  # [N, H]
            sequences[:, 1:][valid],  # [N]
            base.get_output_embeddings(),
            chunk_size=self.config.logprob_chunk_size,
            return_entropy=return_entropy,
        )
        zeros = torch.zeros(valid.shape, dtype=torch.float32, device=sequences.device)
        return ActorOutput(
            log_probs=zeros.masked_scatter(valid, log_probs),
            entropy=zeros.masked_scatter(valid, entropy) if entropy is not None else None,
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
        unknown = sorted(set(modal_inputs) - IMAGE_INPUTS)
        if unknown:
            raise ValueError(
                f"actor 'qwen_vl' takes {sorted(IMAGE_INPUTS)} as extra inputs, got {unknown}"
            )
        config = trunk.config
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        images = _check_images(config, sequences, mask, modal_inputs)
        token_types = torch.zeros_like(sequences, dtype=torch.int32)  # [B, T]
        token_types[sequences == config.image_token_id] = IMAGE
        token_types[sequences == config.video_token_id] = VIDEO
        positions, _ = trunk.get_rope_index(  # [3, B, T]
            sequences,
            token_types,
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

    # ---------------------------------------------------------------- weight sync
    def named_weights_for_sync(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the HF model's ``state_dict`` names, LoRA merged in (adapter
        tensors not listed); sharded weights gathered one by one on every rank."""
        yield from merged_weights(self.base_model)


def _check_images(
    config: Any, sequences: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The image inputs, after checking that they come as a pair and that the rows' image
    placeholders are exactly as many as the grids' merged patches."""
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
