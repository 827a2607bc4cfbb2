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

Log-probs come from the text model's last hidden state, the output head applied chunk by
chunk (``lightrft_core.actors.logprobs``). Videos are not supported yet.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lightrft_core.actors.logprobs import chunked_token_log_probs
from lightrft_core.actors.options import PretrainedActorOptions, dtype_name, load_pretrained
from lightrft_core.actors.weights import merged_weights
from lightrft_core.interfaces import Actor, ActorModality, ActorOutput

IMAGE_INPUTS = frozenset({"pixel_values", "image_grid_thw"})
AUDIO_INPUTS = frozenset({"input_features", "feature_attention_mask"})
#: The extra inputs ``forward`` takes: images and audio (videos are not supported yet).
OMNI_INPUTS = IMAGE_INPUTS | AUDIO_INPUTS

#: Name prefixes of the media encoders' parameters in the thinker.
VISION_PREFIX = "visual."
AUDIO_PREFIX = "audio_tower."


def is_encoder_name(name: str, prefix: str) -> bool:
    """Whether a module or parameter name of the thinker belongs to the encoder ``prefix``."""
    return f"{name}.".startswith(prefix)


class QwenOmniActor(Actor):
    """Wraps a transformers ``Qwen2_5OmniThinkerForConditionalGeneration``."""

    name = "qwen_omni"
    modality = ActorModality.OMNI

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
        if cfg.lora_rank > 0:
            model = self._add_lora(model)
        self.model = model
        frozen = [
            prefix
            for prefix, frozen in (
                (VISION_PREFIX, cfg.freeze_vision_encoder),
                (AUDIO_PREFIX, cfg.freeze_audio_encoder),
            )
            if frozen
        ]
        for name, parameter in self.base_model.named_parameters():
            if any(is_encoder_name(name, prefix) for prefix in frozen):
                parameter.requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    @classmethod
    def from_model(cls, model: torch.nn.Module, config: Any = None) -> QwenOmniActor:
        """Wrap an existing thinker; cast to ``config.dtype`` (kept without ``config``).
        With LoRA on, the adapters are injected into ``model`` itself."""
        if config is None:
            config = cls.Config(dtype=dtype_name(model.dtype))
        return cls(config, model=model)

    # ---------------------------------------------------------------- model parts
    @classmethod
    def hf_path(cls, config: Any) -> str | None:
        return config.path

    @classmethod
    def load_processor(cls, path: str) -> Any:
        """The folder's ``Qwen2_5OmniProcessor``; without torchvision, built without its
        video processor (``omni_processing.py``)."""
        from .omni_processing import load_omni_processor

        return load_omni_processor(path)

    def hf_model(self) -> torch.nn.Module:
        """The transformers thinker, inside its peft wrapper when LoRA is on."""
        return self.model

    @property
    def base_model(self) -> Any:
        """The transformers thinker (the one inside the peft wrapper when LoRA is on)."""
        return self.model.get_base_model() if self._has_lora else self.model

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
        return trunk.model(**inputs, use_cache=False).last_hidden_state

    @property
    def _has_lora(self) -> bool:
        return type(self.model).__module__.startswith("peft.")

    def _add_lora(self, model: torch.nn.Module) -> Any:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        head = model.get_output_embeddings()
        targets = sorted(
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and module is not head
            and (
                cfg.lora_encoders
                or not any(is_encoder_name(name, p) for p in (VISION_PREFIX, AUDIO_PREFIX))
            )
            and (
                cfg.lora_target_modules is None
                or name.rsplit(".", 1)[-1] in cfg.lora_target_modules
            )
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
        """Checkpoint every decoder and encoder layer (non-reentrant); no KV cache."""
        base = self.base_model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing_disable()

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
        ``modal_inputs``: the rows' images and clips, collated (module docstring)."""
        if position_ids is not None:
            raise ValueError(
                "actor 'qwen_omni' does not support packed rows (position_ids): its 3-D rotary "
                "positions come from the image grids; turn sample packing off"
            )
        thinker = self.base_model
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        inputs = self.trunk_inputs(thinker, sequences, attention_mask, **modal_inputs)
        states = self.trunk_hidden_states(thinker, inputs)  # [B, T, H]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]: both tokens real
        log_probs, entropy = chunked_token_log_probs(
            states[:, :-1][valid],  # [N, H]
            sequences[:, 1:][valid],  # [N]
            thinker.get_output_embeddings(),
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
        """The inputs of the thinker's (``trunk``'s) text model ``trunk.model`` for
        right-padded rows: the token embeddings with the media merged in (or the idle
        encoder passes), the mask, and the 3-D rotary positions (module docstring)."""
        unknown = sorted(set(modal_inputs) - OMNI_INPUTS)
        if unknown:
            raise ValueError(
                f"actor 'qwen_omni' takes {sorted(OMNI_INPUTS)} as extra inputs, got {unknown}"
            )
        images = _pair(modal_inputs, IMAGE_INPUTS)
        audio = _pair(modal_inputs, AUDIO_INPUTS)
        mask = attention_mask.to(sequences.device).long()  # [B, T]
        embeddings = trunk.get_input_embeddings()(sequences)  # [B, T, H]
        embeddings = _with_images(trunk, sequences, mask, embeddings, images)
        embeddings = _with_audio(trunk, sequences, mask, embeddings, audio)
        positions, _ = trunk.get_rope_index(  # [3, B, T]
            _media_structure_ids(trunk.config, sequences),
            image_grid_thw=images.get("image_grid_thw"),
            attention_mask=mask,
            audio_seqlens=audio["feature_attention_mask"].sum(-1) if audio else None,
        )
        return {"inputs_embeds": embeddings, "attention_mask": mask, "position_ids": positions}

    # ---------------------------------------------------------------- weight sync
    def named_weights_for_sync(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the thinker's ``state_dict`` names, LoRA merged in (adapter
        tensors not listed); sharded weights gathered one by one on every rank."""
        yield from merged_weights(self.base_model)


def _pair(inputs: dict[str, Any], keys: frozenset[str]) -> dict[str, torch.Tensor]:
    """The inputs of one medium (both keys, or neither)."""
    given = {k: v for k, v in inputs.items() if k in keys}
    if given and set(given) != keys:
        raise ValueError(f"actor 'qwen_omni' needs {sorted(keys)} together, got {sorted(given)}")
    return given


def _scatter(
    what: str,
    token_id: int,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    embeddings: torch.Tensor,
    features: torch.Tensor,
) -> torch.Tensor:
    """``embeddings`` with ``features`` [N, H] at the rows' ``token_id`` placeholders,
    which must be exactly N."""
    slots = (sequences == token_id) & mask.bool()  # [B, T]
    placeholders = int(slots.sum())
    if placeholders != len(features):
        raise ValueError(
            f"the rows hold {placeholders} {what} placeholder tokens but the {what} inputs make "
            f"{len(features)} {what} tokens: the ids must be the processor's ids for this media"
        )
    return embeddings.masked_scatter(slots[..., None], features.to(embeddings.dtype))


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
        blank = _blank_image(thinker.config.vision_config, sequences.device)
        features = thinker.get_image_features(**blank, return_dict=True).pooler_output
        zero = sum(t.float().sum() for t in features) * 0.0
        return embeddings + zero.to(embeddings.dtype)
    out = thinker.get_image_features(
        images["pixel_values"], images["image_grid_thw"], return_dict=True
    )
    features = torch.cat(out.pooler_output)  # [image tokens, H]
    return _scatter("image", thinker.config.image_token_id, sequences, mask, embeddings, features)


def _with_audio(
    thinker: Any,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    embeddings: torch.Tensor,
    audio: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The clips' features at the ``<|AUDIO|>`` placeholders; without clips, plus the audio
    encoder's output on a silent clip times zero."""
    clips = audio or _silent_clip(thinker.config.audio_config, sequences.device)
    features = thinker.get_audio_features(
        clips["input_features"], clips["feature_attention_mask"], return_dict=True
    ).last_hidden_state  # [audio tokens, H]
    if not audio:
        return embeddings + (features.float().sum() * 0.0).to(embeddings.dtype)
    return _scatter("audio", thinker.config.audio_token_id, sequences, mask, embeddings, features)


def _blank_image(vision_config: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The smallest image the vision encoder takes: one merged token's patches, all zero."""
    m = vision_config.spatial_merge_size
    width = (
        vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
    )
    return {
        "pixel_values": torch.zeros(m * m, width, device=device),
        "image_grid_thw": torch.tensor([[1, m, m]], device=device),
    }


def _silent_clip(audio_config: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """One all-zero clip of one encoder chunk (``2 * n_window`` frames), every frame real."""
    frames = 2 * audio_config.n_window
    return {
        "input_features": torch.zeros(1, audio_config.num_mel_bins, frames, device=device),
        "feature_attention_mask": torch.ones(1, frames, dtype=torch.long, device=device),
    }


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
