"""``HFEngine``: rollouts from a Hugging Face causal LM with a hand-written sampling loop.

The loop left-pads prompts, prefills once and then decodes one token per step with the KV
cache. It samples with temperature (0 = greedy), top-k, top-p and FIRE (a separate
temperature for the first response token), stops a row on EOS or any stop token (kept in
the output), and reports behaviour log-probs.

Log-prob convention: ``log_probs`` holds the log-prob of each sampled token under the
model's **raw** distribution -- temperature 1, before top-k/top-p truncation -- i.e. the
``log_softmax`` of the logits. At temperature 1 without top-k/top-p that is exactly what
the actor recomputes in training, and it never depends on the sampling settings.

Prompts with media (``generate(..., multimodal=[...])``, ``supports_multimodal``): the
batch's processor tensors (``collate_modal_inputs``) go into the prefill, and the positions
come from the model itself, the way ``model.generate`` gets them
(``_prepare_position_ids_for_generation``: multi-dimensional rotary positions such as
Qwen2-VL's, with their per-row offsets); each decoding step then continues every position
row by one. The engine names no model family: the per-token modality types the model may
need (``mm_token_type_ids``: 1 image, 2 video) come from the placeholder ids its config
declares (``image_token_id``, ``video_token_id``), and those ids are never sampled (a
response holding one would make the model look for media it does not have; the log-probs
stay the raw ones). A batch without media runs the text path unchanged.

Given the trainer's live module (``setup(model=...)``) the engine shares it: no copy, and
``update_weights`` is a no-op. Given a folder (``setup(model_path=...)``) it owns a copy
and ``update_weights`` copies tensors in by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..interfaces import (
    GenerationOutput,
    InferenceEngine,
    MultiModalInputs,
    SamplingParams,
    collate_modal_inputs,
)

#: Token type of each modality in ``mm_token_type_ids`` (transformers' convention), by the
#: config attribute naming that modality's placeholder id.
MODALITY_TOKEN_TYPES = {"image_token_id": 1, "video_token_id": 2}


def filter_logits(logits: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / top-p (nucleus) set to ``-inf``. ``logits``: [B, V]."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (keeps >= 1)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row from ``logits`` [B, V] (fp32); returns [B] token ids."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def placeholder_ids(config: Any) -> dict[int, int]:
    """The media placeholder ids ``config`` declares (``image_token_id``,
    ``video_token_id``), each with its token type; empty for a text-only model."""
    declared = {attr: getattr(config, attr, None) for attr in MODALITY_TOKEN_TYPES}
    return {tid: MODALITY_TOKEN_TYPES[attr] for attr, tid in declared.items() if tid is not None}


#: Config attributes naming media placeholder ids that have no token type (audio).
UNTYPED_PLACEHOLDERS = ("audio_token_id",)


def never_sampled_ids(config: Any) -> list[int]:
    """Every media placeholder id ``config`` declares (image, video, audio): a response
    never holds one, or the model would look for media that the prompt did not bring."""
    untyped = (getattr(config, attr, None) for attr in UNTYPED_PLACEHOLDERS)
    return sorted({*placeholder_ids(config), *(tid for tid in untyped if tid is not None)})


def modality_token_types(config: Any, input_ids: torch.Tensor) -> torch.Tensor | None:
    """``mm_token_type_ids`` of ``input_ids`` [B, P]: each token's modality (0 text, 1
    image, 2 video) by the placeholder ids ``config`` declares; ``None`` when it declares
    none (the model then needs no token types)."""
    placeholders = placeholder_ids(config)
    if not placeholders:
        return None
    types = torch.zeros_like(input_ids, dtype=torch.int)
    for token_id, token_type in placeholders.items():
        types = types.masked_fill(input_ids == token_id, token_type)
    return types


def load_generative_model(path: str) -> torch.nn.Module:
    """The generative model saved in ``path``: a causal LM, or an image-text-to-text model
    (a vision-language checkpoint) when that is what its config is."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = AutoConfig.from_pretrained(path).model_type
    if (
        model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        return AutoModelForImageTextToText.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


@dataclass
class PrefillInputs:
    """What a batch's first forward takes besides the token ids and the mask: ``positions``
    ([B, P], or [K, B, P] for multi-dimensional rotary positions; each decoding step adds
    1 to every row) and, for media, the processor tensors (``media``)."""

    positions: torch.Tensor
    media: dict[str, torch.Tensor] = field(default_factory=dict)


def prefill_inputs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    media: Sequence[MultiModalInputs | None],
) -> PrefillInputs:
    """The prefill of a left-padded batch (``input_ids``, ``mask`` [B, P]). Without media:
    positions count each row's tokens from its first one. With media: the rows' tensors
    concatenated in row order, and the positions the model computes for them as
    ``model.generate`` does."""
    if all(item is None for item in media):
        return PrefillInputs((mask.cumsum(-1) - 1).clamp(min=0))
    tensors = {k: v.to(input_ids.device) for k, v in collate_modal_inputs(media).items()}
    kwargs = {"input_ids": input_ids, "attention_mask": mask, **tensors}
    token_types = modality_token_types(model.config, input_ids)
    if token_types is not None:
        kwargs["mm_token_type_ids"] = token_types
    # the model's own positions (e.g. 3-D rotary ones and their per-row offsets)
    positions = model._prepare_position_ids_for_generation(input_ids, kwargs)
    return PrefillInputs(positions, tensors)


@contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the duration; restores every submodule's train flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


class HFEngine(InferenceEngine):
    """Generates with a transformers causal LM (the trainer's own module when shared)."""

    name = "hf"
    supports_multimodal = True

    @dataclass
    class Config:
        max_batch_size: int = field(
            default=64,
            metadata={"help": "Rows (prompts x n samples) per generation forward pass."},
        )

        def __post_init__(self) -> None:
            if self.max_batch_size < 1:
                raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.model: torch.nn.Module | None = None
        self._shares_model = False
        self.eos_token_ids: list[int] = []  # every one of them ends a response
        self.pad_token_id = 0

    # ------------------------------------------------------------------ setup
    def setup(
        self,
        *,
        model_path: str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        """Share ``model`` (preferred) or load ``model_path``; EOS/pad ids from ``tokenizer``,
        else from the model's ``generation_config``."""
        if model is not None:
            self.model, self._shares_model = model, True
        elif model_path is not None:
            self.model, self._shares_model = load_generative_model(model_path), False
        else:
            raise ValueError("HFEngine.setup needs model= (shared module) or model_path= (folder)")
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:  # generation_config may list several
            eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            self.eos_token_ids = []
        else:
            self.eos_token_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids or [0])[0]

    @property
    def shares_model(self) -> bool:
        """True once ``setup`` was given the trainer's module."""
        return self._shares_model

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("HFEngine.setup(model=... or model_path=...) was not called")
        return self.model

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        multimodal: Sequence[MultiModalInputs | None] | None = None,
    ) -> list[GenerationOutput]:
        model = self._require_model()
        vocab = model.get_input_embeddings().num_embeddings
        for index, prompt in enumerate(prompt_token_ids):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty; every prompt needs >= 1 token")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ValueError(f"prompt {index} has a token id outside [0, {vocab})")
        media = list(multimodal) if multimodal is not None else [None] * len(prompt_token_ids)
        if len(media) != len(prompt_token_ids):
            raise ValueError(
                f"multimodal has {len(media)} entries for {len(prompt_token_ids)} prompts; "
                "give one per prompt (None for a text-only prompt)"
            )
        rows = [
            (i, list(p), media[i]) for i, p in enumerate(prompt_token_ids) for _ in range(params.n)
        ]
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self._device()).manual_seed(params.seed)
        outputs: list[GenerationOutput] = []
        size = self.config.max_batch_size
        with inference_mode(model):
            for start in range(0, len(rows), size):
                outputs.extend(
                    self._generate_batch(model, rows[start : start + size], params, generator)
                )
        return outputs

    def _device(self) -> torch.device:
        return next(self._require_model().parameters()).device

    def _generate_batch(
        self,
        model: torch.nn.Module,
        rows: list[tuple[int, list[int], MultiModalInputs | None]],
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> list[GenerationOutput]:
        device, batch = self._device(), len(rows)
        width = max(len(prompt) for _, prompt, _ in rows)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, (_, prompt, _) in enumerate(rows):  # left padding
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)  # [B, P]
        prefill = prefill_inputs(model, input_ids, mask, [item for _, _, item in rows])
        positions = prefill.positions  # [B, P] or [K, B, P]
        stop_ids = {*params.stop_token_ids, *self.eos_token_ids}
        stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)  # [S]
        # a response never holds a media placeholder: the model would look for its media
        never = never_sampled_ids(model.config)
        banned = torch.tensor(never, dtype=torch.long, device=device)  # [N], empty for text LMs

        tokens: list[torch.Tensor] = []  # each [B]
        log_probs: list[torch.Tensor] = []  # each [B]
        done = torch.zeros(batch, dtype=torch.bool, device=device)  # row already stopped
        stopped_at = torch.full((batch,), -1, dtype=torch.long, device=device)
        past, step_ids, step_pos = None, input_ids, positions
        for step in range(params.max_new_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
                **(prefill.media if past is None else {}),  # the media go in with the prompt
            )
            logits = out.logits[:, -1, :].float()  # [B, V]
            temperature = params.temperature
            if step == 0 and params.first_token_temperature is not None:
                temperature = params.first_token_temperature
            next_ids = sample_next(
                logits.index_fill(-1, banned, float("-inf")) if never else logits,
                temperature=temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                generator=generator,
            )  # [B]
            next_ids = next_ids.masked_fill(done, self.pad_token_id)
            tokens.append(next_ids)
            if params.return_log_probs:
                raw = torch.log_softmax(logits, dim=-1)  # temperature 1, untruncated
                log_probs.append(raw.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1))
            hit = ~done & torch.isin(next_ids, stop)
            stopped_at = torch.where(hit, step, stopped_at)
            done |= hit
            if bool(done.all()):
                break
            # next step: feed the new token (or, if the cache was dropped, everything)
            past = getattr(out, "past_key_values", None)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)  # [B, P+t+1]
            next_pos = positions[..., -1:] + 1  # [B, 1] or [K, B, 1]
            positions = torch.cat([positions, next_pos], dim=-1)
            input_ids = torch.cat([input_ids, next_ids.unsqueeze(-1)], dim=-1)
            if past is not None:
                step_ids, step_pos = next_ids.unsqueeze(-1), next_pos  # [B, 1]
            else:
                step_ids, step_pos = input_ids, positions

        all_tokens = torch.stack(tokens, dim=-1).tolist()  # [B, T]
        all_log_probs = torch.stack(log_probs, dim=-1).tolist() if log_probs else None
        outputs = []
        for row, (index, _, _) in enumerate(rows):
            end = int(stopped_at[row])
            length = end + 1 if end >= 0 else len(all_tokens[row])
            outputs.append(
                GenerationOutput(
                    prompt_index=index,
                    token_ids=all_tokens[row][:length],
                    log_probs=all_log_probs[row][:length] if all_log_probs else [],
                    finish_reason="stop" if end >= 0 else "length",
                )
            )
        return outputs

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Shared module: nothing to copy (the iterator is drained). Own copy: copy each
        tensor into the parameter or buffer of that name; unknown names are an error."""
        model = self._require_model()
        if self.shares_model:
            for _ in named_tensors:
                pass
            return
        own = model.state_dict(keep_vars=True)
        bucket = list(named_tensors)
        unknown = [name for name, _ in bucket if name not in own]
        if unknown:
            raise KeyError(
                f"update_weights got {len(unknown)} name(s) the engine's model does not have: "
                f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; send Hugging Face names "
                f"(e.g. {next(iter(own), '?')!r}), not wrapped (peft/FSDP) ones"
            )
        with torch.no_grad():
            for name, tensor in bucket:
                target = own[name]
                if target.shape != tensor.shape:
                    raise ValueError(
                        f"update_weights: {name} has shape {tuple(tensor.shape)}, "
                        f"the engine expects {tuple(target.shape)}"
                    )
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def shutdown(self) -> None:
        self.model = None
