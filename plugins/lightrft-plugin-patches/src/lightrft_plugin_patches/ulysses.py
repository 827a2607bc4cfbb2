"""``ulysses_attention``: Ulysses sequence parallelism for the Llama and Qwen2 attention.

Each rank of a sequence-parallel group holds a contiguous slice of every sequence. Around
the attention kernel an all-to-all turns the slice's queries, keys and values
``[B, heads, T/P, D]`` into all positions of ``heads/P`` heads ``[B, heads/P, T, D]``; the
kernel sees whole sequences; a second all-to-all turns its output back into the slice
``[B, T/P, heads, D]``. Projections, rotary embeddings (from the slice's global positions),
norms and MLPs run on the slice alone.

The patch replaces ``ALL_ATTENTION_FUNCTIONS`` inside the patched modeling modules by a
wrapper. The wrapper changes nothing unless the model call carries
``ulysses=UlyssesContext(...)`` (``sequence_parallel.py`` passes it), so an applied patch
leaves ordinary forward passes, generation included, as they were.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from lightrft_core.interfaces import ModelPatch

from .collectives import all_to_all

#: Model family -> the transformers module whose attention the patch wraps.
PATCHED_MODULES: dict[str, str] = {
    "llama": "transformers.models.llama.modeling_llama",
    "qwen2": "transformers.models.qwen2.modeling_qwen2",
}
#: The keyword argument of the model call that turns sequence parallelism on.
CONTEXT_KWARG = "ulysses"


@dataclass(frozen=True)
class UlyssesContext:
    """What the attention needs beyond its own inputs: the sequence-parallel process group,
    the mask of the whole sequences in the kernel's format (``None``: causal only) and
    keyword arguments the kernel takes for whole rows in place of the slice's (packed rows:
    ``position_ids`` for flash-attention's variable-length path, ``packed_segments`` for
    SDPA run per sequence)."""

    group: Any
    attention_mask: torch.Tensor | None
    kernel_kwargs: dict[str, Any] = field(default_factory=dict)


def ulysses_attention(
    kernel: Callable[..., Any],
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``kernel`` on whole sequences when the call carries a ``UlyssesContext``, else
    ``kernel`` itself. ``query``/``key``/``value``: ``[B, heads, T/P, D]``."""
    context: UlyssesContext | None = kwargs.pop(CONTEXT_KWARG, None)
    if context is None:
        return kernel(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError("sequence parallelism does not support sliding-window attention")
    kwargs.pop("position_ids", None)  # the slice's positions; the kernel sees whole sequences
    kwargs.update(context.kernel_kwargs)
    group = context.group
    query = all_to_all(query, group, scatter_dim=1, gather_dim=2)  # [B, heads/P, T, D]
    key = all_to_all(key, group, scatter_dim=1, gather_dim=2)
    value = all_to_all(value, group, scatter_dim=1, gather_dim=2)
    output, _ = kernel(module, query, key, value, context.attention_mask, **kwargs)
    # output: [B, T, heads/P, D] -> [B, T/P, heads, D]
    return all_to_all(output, group, scatter_dim=1, gather_dim=2), None


class UlyssesAttentionFunctions:
    """Stands in for transformers' ``ALL_ATTENTION_FUNCTIONS`` in a patched module: every
    kernel it hands out is wrapped by ``ulysses_attention``."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def get_interface(self, implementation: str, default: Callable[..., Any]) -> Any:
        kernel = self.original.get_interface(implementation, default)
        return functools.partial(ulysses_attention, kernel)


class UlyssesAttention(ModelPatch):
    """Wraps the attention of the chosen model families for Ulysses sequence parallelism."""

    name = "ulysses_attention"

    @dataclass
    class Config:
        models: list[str] = field(
            default_factory=lambda: sorted(PATCHED_MODULES),
            metadata={"help": f"Model families to patch ({', '.join(sorted(PATCHED_MODULES))})."},
        )

        def __post_init__(self) -> None:
            unknown = sorted(set(self.models) - set(PATCHED_MODULES))
            if unknown:
                raise ValueError(
                    f"ulysses_attention patches {', '.join(sorted(PATCHED_MODULES))}; "
                    f"not {', '.join(unknown)}"
                )

    def _modules(self) -> list[ModuleType]:
        return [importlib.import_module(PATCHED_MODULES[m]) for m in self.config.models]

    def apply(self) -> None:
        for module in self._modules():
            current = module.ALL_ATTENTION_FUNCTIONS
            if not isinstance(current, UlyssesAttentionFunctions):
                vars(module)["ALL_ATTENTION_FUNCTIONS"] = UlyssesAttentionFunctions(current)

    def revert(self) -> None:
        for module in self._modules():
            current = module.ALL_ATTENTION_FUNCTIONS
            if isinstance(current, UlyssesAttentionFunctions):
                vars(module)["ALL_ATTENTION_FUNCTIONS"] = current.original


def is_patched(family: str) -> bool:
    """Whether the attention of ``family`` (``llama``, ``qwen2``) is wrapped now."""
    module = importlib.import_module(PATCHED_MODULES[family])
    return isinstance(module.ALL_ATTENTION_FUNCTIONS, UlyssesAttentionFunctions)


def family_of(model: torch.nn.Module) -> str:
    """The patchable family (``llama``, ``qwen2``) of a transformers model; ``ValueError``
    for any other."""
    for family, module_name in PATCHED_MODULES.items():
        if type(model).__module__ == module_name:
            return family
    raise ValueError(
        f"sequence parallelism supports the {', '.join(sorted(PATCHED_MODULES))} models; "
        f"{type(model).__name__} is not one of them"
    )
