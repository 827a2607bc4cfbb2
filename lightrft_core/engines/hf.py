"""``HFEngine``: rollouts from a Hugging Face causal LM with a hand-written sampling loop.

The loop left-pads prompts, prefills once and then decodes one token per step with a KV
cache allocated once per batch (``kv_cache.py``); every forward returns the last
position's logits only (``logits_to_keep``, where the model takes it). A text prompt with
several samples in the batch is prefilled once: its cache is copied to each of its rows
(``prompt_runs``), and the output head reads its last hidden state copied to every row
(``head_reads_rows``), so that the head runs on as many rows as before: the numbers of a
prefill per row, up to float rounding where the decoder's matrix kernels round
differently for another number of rows (none seen on the tiny models in fp32). It samples with
temperature (0 = greedy), top-k, top-p and FIRE (a separate temperature for the first
response token) in a few tensor ops (``sampling.py``), stops a row on EOS or any stop
token (kept in the output), and reports behaviour log-probs. The host checks for finished
rows once per ``check_every`` steps, and rows that finished leave the batch
(``compact_at``); the random stream is that of ``torch.multinomial`` on the whole batch
either way.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from ..actors.varlen_attention import install as install_sdpa_attention
from ..interfaces import (
    GenerationOutput,
    InferenceEngine,
    MultiModalInputs,
    SamplingParams,
    collate_modal_inputs,
)
from .kv_cache import preallocated_cache
from .sampling import exponential_noise, sample_next

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

#: Token type of each modality in ``mm_token_type_ids`` (transformers' convention), by the
#: config attribute naming that modality's placeholder id.
MODALITY_TOKEN_TYPES = {"image_token_id": 1, "video_token_id": 2}

#: Decoding steps between checks for finished rows on an accelerator (each check waits
#: for the device); on CPU a check costs nothing and happens every step.
ACCELERATOR_CHECK_EVERY = 8


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
    (a vision-language checkpoint), or another multimodal LM (e.g. audio-text) when that is
    what its config is."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForMultimodalLM,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
    )

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM.from_pretrained(path)
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText.from_pretrained(path)
    if model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES:
        return AutoModelForMultimodalLM.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


@dataclass(frozen=True)
class PromptRuns:
    """The rows of a batch as runs of one prompt each (its samples, next to each other):
    ``first`` [U], the first row of each run; ``source`` [B], each row's run."""

    first: torch.Tensor
    source: torch.Tensor


def prompt_runs(prompt_indices: Sequence[int], device: torch.device) -> PromptRuns | None:
    """The runs of equal ``prompt_indices`` (one per row); ``None`` when every run has one
    row (nothing to share)."""
    starts = [
        row == 0 or index != prompt_indices[row - 1] for row, index in enumerate(prompt_indices)
    ]
    if all(starts):
        return None
    flags = torch.tensor(starts, device=device)
    return PromptRuns(first=flags.nonzero().squeeze(-1), source=flags.cumsum(0) - 1)


@contextmanager
def head_reads_rows(head: torch.nn.Module, rows: torch.Tensor) -> Iterator[None]:
    """For the duration, the output ``head`` reads the rows ``rows`` of its input: a
    prompt's last hidden state copied to each of its samples' rows, so that the head runs
    on as many rows as a prefill per row gives it (its matrix kernel, its rounding)."""
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][rows], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


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
    generative = cast("GenerationMixin", model)
    positions = generative._prepare_position_ids_for_generation(input_ids, kwargs)
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
        check_every: int | None = field(
            default=None,
            metadata={
                "help": "Decoding steps between checks for finished rows (the loop's only "
                "host synchronisation); None: every step on CPU, every 8 on accelerators. "
                "Steps decoded after a batch finished draw random numbers too, so the value "
                "changes later batches' samples (the same seed still gives the same ones)."
            },
        )
        compact_at: float = field(
            default=0.25,
            metadata={
                "help": "Drop finished rows from the batch at a check once this fraction of "
                "its rows has finished (> 1: never)."
            },
        )

        compile_decode: bool = field(
            default=False,
            metadata={
                "help": "torch.compile the model's forward for the decoding steps (dynamic "
                "shapes, compiled at the first generate; numbers differ from eager by float "
                "rounding). CPU, 5m model: a compile of about 2 minutes, then 1.4x faster "
                "on 32 rows x up to 256 tokens but 0.73x on 128 rows x 8 tokens: off "
                "unless the run and its responses are long."
            },
        )

        def __post_init__(self) -> None:
            if self.max_batch_size < 1:
                raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
            if self.check_every is not None and self.check_every < 1:
                raise ValueError(f"check_every must be >= 1, got {self.check_every}")
            if self.compact_at <= 0:
                raise ValueError(f"compact_at must be > 0, got {self.compact_at}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.model: torch.nn.Module | None = None
        self._shares_model = False
        self._compiled: tuple[torch.nn.Module, Any] | None = None  # (model, its compiled forward)
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
        else from the model's ``generation_config``. Installs LightRFT's ``sdpa`` attention
        function (grouped key/value heads read in place under the batch's padding mask on
        CPU, the same numbers as transformers' copy of them; ``varlen_attention.py``)."""
        install_sdpa_attention()
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
        # transformers types the input embeddings as any Module
        embeddings = cast(torch.nn.Embedding, cast("PreTrainedModel", model).get_input_embeddings())
        vocab = embeddings.num_embeddings
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

    def _check_every(self, device: torch.device) -> int:
        if self.config.check_every is not None:
            return self.config.check_every
        return 1 if device.type == "cpu" else ACCELERATOR_CHECK_EVERY

    def _generate_batch(
        self,
        model: torch.nn.Module,
        rows: list[tuple[int, list[int], MultiModalInputs | None]],
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> list[GenerationOutput]:
        device, batch, steps = self._device(), len(rows), params.max_new_tokens
        width = max(len(prompt) for _, prompt, _ in rows)
        pad = self.pad_token_id
        # left padding, built in one tensor each (a loop over rows costs ~10 us a row)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for _, p, _ in rows])
        first_real = torch.tensor([width - len(prompt) for _, prompt, _ in rows])  # [B]
        # the prompt's tokens and every response position
        mask = (torch.arange(width + steps) >= first_real.unsqueeze(-1)).long()
        input_ids, mask = input_ids.to(device), mask.to(device)  # [B, P], [B, P+T]
        media = [item for *_, item in rows]
        prefill = prefill_inputs(model, input_ids, mask[:, :width], media)
        # a text prompt's samples share its prefill (media: each row its own)
        # (a model without an output-embeddings module: each row its own prefill too)
        head = cast("PreTrainedModel", model).get_output_embeddings()
        runs = (
            None
            if prefill.media or head is None
            else prompt_runs([index for index, *_ in rows], device)
        )
        stop_ids = {*params.stop_token_ids, *self.eos_token_ids}
        stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)  # [S]
        # a response never holds a media placeholder: the model would look for its media
        never = never_sampled_ids(model.config)
        banned = torch.tensor(never, dtype=torch.long, device=device)  # [N], empty for text LMs

        # results, by original row; ``alive``: the original rows still in the batch (None
        # until finished rows leave it, once ``compact_at`` of it has finished)
        tokens = torch.full((batch, steps), self.pad_token_id, dtype=torch.long, device=device)
        log_probs = torch.zeros((batch, steps), device=device) if params.return_log_probs else None
        alive: torch.Tensor | None = None  # [b]
        done = torch.zeros(batch, dtype=torch.bool, device=device)  # [b] row has stopped
        cache = preallocated_cache(model.config, width + steps)
        # logits of the last position only (as ``model.generate`` asks): a prefill's
        # [B, P, V] would not fit for large vocabularies (GenerationMixin's method, typed for
        # transformers' private host protocol)
        supports_keep = cast(Any, model)._supports_logits_to_keep()
        last_only = {"logits_to_keep": 1} if supports_keep else {}
        forward, decode_forward = model, self._decode_forward(model)
        step_ids, step_pos = input_ids, prefill.positions  # [B, P], [B, P] or [K, B, P]
        last_pos = prefill.positions[..., -1:]  # [b, 1] or [K, b, 1]
        step_mask = mask
        if runs is not None:  # the prefill of each run's first row: [U, P]
            step_ids, step_pos, step_mask = (
                input_ids[runs.first],
                step_pos[runs.first],
                mask[runs.first],
            )
        check_every = self._check_every(device)
        for step in range(steps):
            shared = runs if step == 0 else None
            with head_reads_rows(head, shared.source) if shared is not None else nullcontext():
                out = forward(
                    input_ids=step_ids,
                    attention_mask=step_mask[:, : width + step],
                    position_ids=step_pos,
                    past_key_values=cache,
                    use_cache=True,
                    **last_only,
                    **(prefill.media if step == 0 else {}),  # the media go in with the prompt
                )
            if step == 0 and cache.get_seq_length() != width:
                raise RuntimeError(f"{type(model).__name__} did not fill the KV cache it was given")
            logits = out.logits[:, -1, :].float()  # [b, V]
            if shared is not None:  # each run's prefill copied to its rows
                cache.batch_select_indices(shared.source)
                if logits.shape[0] != batch:  # the forward's head is not that module
                    logits = logits[shared.source]
            temperature = params.temperature
            if step == 0 and params.first_token_temperature is not None:
                temperature = params.first_token_temperature
            noise = None
            if temperature > 0:  # drawn for every row of the batch: the stream stays the same
                noise = exponential_noise(
                    (batch, logits.shape[-1]), device=device, generator=generator
                )
                noise = noise if alive is None else noise[alive]
            next_ids = sample_next(
                logits.index_fill(-1, banned, float("-inf")) if never else logits,
                temperature=temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                noise=noise,
            )  # [b]; a stopped row goes on sampling (cut off below), alone in its row
            rows_now = slice(None) if alive is None else alive
            tokens[rows_now, step] = next_ids
            if log_probs is not None:  # temperature 1, untruncated
                raw = torch.log_softmax(logits, dim=-1)
                log_probs[rows_now, step] = raw.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
            done |= torch.isin(next_ids, stop)
            if step + 1 == steps:
                break
            if (step + 1) % check_every == 0:  # the loop's only host synchronisation
                finished = int(done.sum())
                if finished == len(done):
                    break
                if finished and finished >= self.config.compact_at * len(done):
                    keep = (~done).nonzero().squeeze(-1)
                    cache.batch_select_indices(keep)
                    mask, last_pos, next_ids = mask[keep], last_pos[..., keep, :], next_ids[keep]
                    alive, done = keep if alive is None else alive[keep], done[keep]
            forward = decode_forward
            last_pos = last_pos + 1
            step_ids, step_pos, step_mask = next_ids.unsqueeze(-1), last_pos, mask  # [b, 1]
        return self._outputs(rows, tokens, log_probs, stop)

    def _outputs(
        self,
        rows: list[tuple[int, list[int], MultiModalInputs | None]],
        tokens: torch.Tensor,
        log_probs: torch.Tensor | None,
        stop: torch.Tensor,
    ) -> list[GenerationOutput]:
        """Each row's response: its ``tokens`` [B, T] up to and with the first stop id, else
        all of them (later positions hold a stopped row's ignored samples, or padding)."""
        is_stop = torch.isin(tokens, stop)  # [B, T]
        stopped = is_stop.any(dim=-1).tolist()
        lengths = torch.where(
            is_stop.any(dim=-1), is_stop.int().argmax(dim=-1) + 1, tokens.shape[1]
        ).tolist()
        all_tokens = tokens.tolist()
        all_log_probs = log_probs.tolist() if log_probs is not None else None
        return [
            GenerationOutput(
                prompt_index=index,
                token_ids=all_tokens[row][: lengths[row]],
                log_probs=all_log_probs[row][: lengths[row]] if all_log_probs else [],
                finish_reason="stop" if stopped[row] else "length",
            )
            for row, (index, _, _) in enumerate(rows)
        ]

    def _decode_forward(self, model: torch.nn.Module) -> Any:
        """The callable of the decoding steps: the model, or (``compile_decode``) its
        forward compiled once with dynamic shapes, kept while the engine has that model."""
        if not self.config.compile_decode:
            return model
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model.forward, dynamic=True))
        return self._compiled[1]

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
