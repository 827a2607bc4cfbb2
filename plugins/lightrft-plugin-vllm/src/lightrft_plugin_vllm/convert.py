"""Pure conversions between LightRFT's engine types and vLLM's (no vllm import here).

* ``sampling_kwargs`` -- ``SamplingParams`` -> keyword arguments of ``vllm.SamplingParams``;
* ``outputs_from_request_outputs`` -- vLLM ``RequestOutput`` objects -> ``GenerationOutput``;
* ``collapse_placeholders`` -- a prompt's expanded media placeholders -> one per image or
  clip, the form vLLM expands itself;
* ``weight_buckets`` -- groups a stream of named tensors so that no vLLM module is split
  between two reloads, bounded by a byte budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from lightrft_core.interfaces import GenerationOutput, SamplingParams

#: ``model.layers.3.self_attn.q_proj.weight`` -> ``model.layers.3``: one decoder layer;
#: ``model.visual.blocks.1.mlp.fc1.weight`` -> ``model.visual.blocks.1``: one vision block.
_LAYER_PREFIX = re.compile(r"^(.*?\.(?:layers|blocks)\.\d+)\.")


#: vLLM clamps logit biases to [-100, 100].
BANNED_LOGIT_BIAS = -100.0


def sampling_kwargs(
    params: SamplingParams,
    *,
    eos_token_ids: Sequence[int],
    banned_token_ids: Sequence[int] = (),
    temperature: float | None = None,
    max_tokens: int | None = None,
    n: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams``.

    The engine runs without a tokenizer, so vLLM knows no EOS: the EOS ids are added to
    the stop ids (vLLM then keeps the stop token in ``token_ids``, like the ``hf`` engine).
    ``logprobs=0`` asks for the log-prob of the sampled token only. ``banned_token_ids``
    (media placeholders) get a logit bias of -100, vLLM's lowest: never sampled, while the
    reported log-probs stay the raw ones (vLLM takes them before any logit processing). The
    keyword overrides serve FIRE's two phases.
    """
    stop = sorted({*params.stop_token_ids, *eos_token_ids})
    return {
        "n": params.n if n is None else n,
        "temperature": params.temperature if temperature is None else temperature,
        "top_p": params.top_p,
        "top_k": 0 if params.top_k in (-1, 0) else params.top_k,  # vLLM: 0 = off
        "max_tokens": params.max_new_tokens if max_tokens is None else max_tokens,
        "stop_token_ids": stop,
        "seed": params.seed if seed is None else seed,
        "logprobs": 0 if params.return_log_probs else None,
        "detokenize": False,
        "skip_special_tokens": False,
        "logit_bias": {int(t): BANNED_LOGIT_BIAS for t in banned_token_ids} or None,
    }


def completion_log_probs(completion: Any) -> list[float]:
    """The log-prob of each sampled token from a vLLM ``CompletionOutput``: its
    ``logprobs`` is one ``{token_id: Logprob}`` dict per position (the sampled token is
    always a key, with ``logprobs=0`` the only one)."""
    entries = completion.logprobs
    if entries is None:
        return []
    token_ids = list(completion.token_ids)
    if len(entries) != len(token_ids):
        raise RuntimeError(
            f"vLLM returned {len(entries)} log-prob entries for {len(token_ids)} tokens"
        )
    return [float(entry[token].logprob) for entry, token in zip(entries, token_ids, strict=True)]


def finish_reason(completion: Any) -> str:
    """``"stop"`` when an EOS/stop token ended the response, else ``"length"``."""
    return "stop" if getattr(completion, "finish_reason", None) == "stop" else "length"


def outputs_from_request_outputs(
    request_outputs: Sequence[Any],
    *,
    n: int,
    return_log_probs: bool = True,
    rebuilt: Sequence[bool] | None = None,
) -> list[GenerationOutput]:
    """One ``GenerationOutput`` per completion, grouped by prompt in input order (vLLM
    returns request outputs in input order; completions are sorted by their ``index``).
    ``rebuilt[i]``: vLLM built prompt ``i``'s ids itself (expanding its media
    placeholders); its outputs then report the ids it used (``prompt_token_ids``)."""
    outputs: list[GenerationOutput] = []
    for prompt_index, request in enumerate(request_outputs):
        used = None
        if rebuilt is not None and rebuilt[prompt_index]:
            used = [int(t) for t in request.prompt_token_ids]
        completions = sorted(request.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(
                f"vLLM returned {len(completions)} completions for prompt {prompt_index}, "
                f"expected n={n}"
            )
        for completion in completions:
            outputs.append(
                GenerationOutput(
                    prompt_index=prompt_index,
                    token_ids=[int(t) for t in completion.token_ids],
                    log_probs=completion_log_probs(completion) if return_log_probs else [],
                    finish_reason=finish_reason(completion),
                    prompt_token_ids=used,
                )
            )
    return outputs


def join_first_tokens(
    first: list[GenerationOutput], rest: dict[int, GenerationOutput]
) -> list[GenerationOutput]:
    """FIRE: append each continuation (``rest[row]``) to its first-token output."""
    joined = []
    for row, head in enumerate(first):
        tail = rest.get(row)
        if tail is None:
            joined.append(head)
            continue
        joined.append(
            GenerationOutput(
                prompt_index=head.prompt_index,
                token_ids=head.token_ids + tail.token_ids,
                log_probs=head.log_probs + tail.log_probs,
                finish_reason=tail.finish_reason,
                prompt_token_ids=head.prompt_token_ids,
            )
        )
    return joined


def collapse_placeholders(
    prompt: Sequence[int], placeholder_id: int, items: int, *, kind: str = "image"
) -> list[int]:
    """``prompt`` with each run of ``placeholder_id`` (one expanded image or clip, ``kind``)
    shortened to one token: vLLM takes one placeholder per item and expands it with its own
    processor. ``items``: the prompt's item count, which must equal the number of runs (two
    items whose placeholders touch cannot be told apart)."""
    collapsed: list[int] = []
    runs = 0
    for position, token in enumerate(prompt):
        if token != placeholder_id:
            collapsed.append(token)
        elif position == 0 or prompt[position - 1] != placeholder_id:
            collapsed.append(token)
            runs += 1
    if runs != items:
        raise ValueError(
            f"the prompt holds {runs} run(s) of the {kind} placeholder id {placeholder_id} but "
            f"comes with {items} {kind}(s): each {kind} needs its own run of placeholders, "
            f"separated from the next by another token (the processor's ids for these {kind}s)"
        )
    return collapsed


def module_key(name: str) -> str:
    """The unit that must be reloaded whole: a decoder layer, else the tensor itself.

    vLLM fuses q/k/v and gate/up projections; a reload that brings only part of a fused
    module leaves the rest uninitialised, so a decoder layer never spans two reloads.
    """
    match = _LAYER_PREFIX.match(name)
    return match.group(1) if match else name


def weight_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], *, max_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``named_tensors`` (in the order given) into buckets of whole modules
    (``module_key``), each at most ``max_bytes`` unless one module alone is larger."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size, key = 0, None
    group: list[tuple[str, torch.Tensor]] = []
    group_size = 0
    for name, tensor in named_tensors:
        this_key = module_key(name)
        if group and this_key != key:
            if bucket and size + group_size > max_bytes:
                yield bucket
                bucket, size = [], 0
            bucket.extend(group)
            size += group_size
            group, group_size = [], 0
        key = this_key
        group.append((name, tensor))
        group_size += tensor.numel() * tensor.element_size()
    if group:
        if bucket and size + group_size > max_bytes:
            yield bucket
            bucket = []
        bucket.extend(group)
    if bucket:
        yield bucket


def bucket_to_bytes(bucket: Sequence[tuple[str, torch.Tensor]]) -> bytes:
    """Serialise a bucket with safetensors (for an engine worker in another process).
    Tensors sharing storage (a tied ``lm_head``) are written as separate copies."""
    from safetensors.torch import save

    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in bucket:
        tensor = tensor.detach().cpu()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        seen.add(pointer)
        tensors[name] = tensor
    return save(tensors)


def bucket_from_bytes(data: bytes) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load

    return list(load(data).items())
