"""What every actor around a Hugging Face model shares: its options (where the model is, how
it is loaded, which model patches apply, how log-probs are chunked, LoRA) and loading the
model they select.
``ActorLanguage.Config`` is exactly these options; a plugin actor's ``Config`` extends them
with its own (e.g. the vision tower's)."""

from __future__ import annotations

import importlib.util
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger("lightrft.actor")

#: ``dtype`` option -> torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ATTN_CHOICES = ("auto", "eager", "sdpa", "flash_attention_2")


@dataclass
class PretrainedActorOptions:
    """Options of an actor around a Hugging Face model (``model.*``)."""

    # ------------------------------------------------------------ model
    path: str | None = field(
        default=None,
        metadata={"help": "Hugging Face model folder (or hub id) to load the policy from."},
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Parameter dtype of the loaded model."}
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = field(
        default="auto",
        metadata={
            "help": "Attention kernel. 'auto': flash_attention_2 when flash_attn is "
            "installed, CUDA is available and dtype is 16-bit, else sdpa."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code shipped with the checkpoint."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute layer activations in backward to save memory."},
    )
    logprob_chunk_size: int = field(
        default=1024,
        metadata={"help": "Token positions per chunk when computing log-probs."},
    )
    patches: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Model patches to apply before the model is loaded, by name "
            "('lightrft plugins' lists them), e.g. [ulysses_attention]."
        },
    )
    # ------------------------------------------------------------ LoRA
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on LoRA inputs."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names LoRA adapts; null: every linear layer except the "
            "output head (lm_head)."
        },
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.attn_implementation not in ATTN_CHOICES:
            raise ValueError(
                f"attn_implementation must be one of {', '.join(ATTN_CHOICES)}, "
                f"got {self.attn_implementation!r}"
            )
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {self.logprob_chunk_size}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = off), got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not all(isinstance(name, str) and name for name in self.patches):
            raise ValueError(f"patches must be a list of patch names, got {self.patches!r}")
        targets = self.lora_target_modules
        if targets is not None and (not targets or not all(targets)):
            raise ValueError(
                "lora_target_modules must be null (auto-detect) or a non-empty list "
                f"of module names, got {targets!r}"
            )


def resolve_attn_implementation(requested: str, dtype: str) -> str:
    """The attention implementation to load; logs one line saying which and why."""
    if requested in ("eager", "sdpa"):
        logger.info("actor attention: %s (as configured)", requested)
        return requested
    if importlib.util.find_spec("flash_attn") is None:
        why = "flash_attn is not installed"
    elif not torch.cuda.is_available():
        why = "CUDA is not available"
    elif dtype not in ("bfloat16", "float16"):
        why = f"flash-attention needs bfloat16 or float16, dtype is {dtype}"
    else:
        logger.info("actor attention: flash_attention_2 (flash_attn installed, CUDA available)")
        return "flash_attention_2"
    if requested == "flash_attention_2":
        logger.warning("actor attention: sdpa, not the requested flash_attention_2 (%s)", why)
    else:
        logger.info("actor attention: sdpa (%s)", why)
    return "sdpa"


def forward_attention(device: torch.device, weights: torch.dtype) -> AbstractContextManager[Any]:
    """The SDPA kernels of a training or log-prob forward on ``device`` with ``weights`` of
    that dtype: on the CPU with 16-bit inputs (bf16/fp16 autocast or 16-bit weights) the
    math kernel, whose backward runs 2-3x faster there than the CPU flash kernel's (same
    results within 16-bit rounding); elsewhere torch's own choice. Generation keeps
    torch's choice (flash is the faster one for one-token decoding steps)."""
    half = (torch.bfloat16, torch.float16)
    if device.type != "cpu":
        return nullcontext()
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in half
    if not (autocast or weights in half):
        return nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


#: Whether torch may use each SDPA kernel now (what ``sdpa_kernel`` sets).
_SDPA_ALLOWED = {
    SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
    SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
    SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled,
    SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled,
}


def checkpoint_contexts() -> tuple[AbstractContextManager[Any], AbstractContextManager[Any]]:
    """``torch.utils.checkpoint``'s ``context_fn``: a layer recomputed in backward gets the SDPA
    kernels its forward was given (``forward_attention`` holds only around the forward; with
    another kernel the recomputation saves other tensors and the checkpoint fails)."""
    allowed = [backend for backend, enabled in _SDPA_ALLOWED.items() if enabled()]
    if len(allowed) == len(_SDPA_ALLOWED):
        return nullcontext(), nullcontext()
    return nullcontext(), sdpa_kernel(allowed)


#: ``gradient_checkpointing_kwargs`` of every model the actors checkpoint.
CHECKPOINT_KWARGS: dict[str, Any] = {"use_reentrant": False, "context_fn": checkpoint_contexts}


def apply_patches(names: list[str]) -> None:
    """Apply the registered model patches ``names`` (each ``apply()`` is idempotent)."""
    from ..plugins import get_patch

    for name in names:
        get_patch(name)().apply()
        logger.info("model patch applied: %s", name)


def load_pretrained(
    auto_class: Any, options: PretrainedActorOptions, *, actor: str, model: Any = None
) -> Any:
    """The model ``options`` select, once their ``patches`` are applied:
    ``auto_class.from_pretrained(options.path)`` in the
    options' dtype and attention kernel, or ``model`` (already built) cast to them.
    ``actor``: the actor's name, for the error when there is no path."""
    apply_patches(options.patches)
    attn = resolve_attn_implementation(options.attn_implementation, options.dtype)
    dtype = DTYPES[options.dtype]
    if model is None:
        if options.path is None:
            raise ValueError(
                f"actor {actor!r} needs a model: set model.path to a Hugging Face model folder, "
                "or build the actor with from_model(model)"
            )
        return auto_class.from_pretrained(
            options.path,
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=options.trust_remote_code,
        )
    if model.dtype != dtype:
        model = model.to(dtype)
    if model.config._attn_implementation != attn:
        model.set_attn_implementation(attn)
    return model


def dtype_name(dtype: torch.dtype) -> str:
    """The ``dtype`` option of a torch dtype (``float32`` for one the options do not have)."""
    return {value: name for name, value in DTYPES.items()}.get(dtype, "float32")
