"""``InferenceEngine``: generates rollouts and receives the trained weights.

The training loop calls ``setup(...)`` once, then per step: ``wake_up()`` ->
``generate(...)`` -> ``sleep()`` -> (training) -> ``update_weights(...)``. Engines that
cannot release memory report
``supports_sleep = False`` and treat ``sleep``/``wake_up`` as no-ops.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .component import Component
from .multimodal import MultiModalInputs


@dataclass
class SamplingParams:
    """How to sample. ``n`` samples per prompt; ``top_k = -1`` and ``top_p = 1`` disable
    those filters; ``temperature = 0`` is greedy. ``first_token_temperature`` (FIRE) samples
    only the first response token at that temperature when set."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    stop_token_ids: Sequence[int] = ()
    seed: int | None = None
    return_log_probs: bool = True
    first_token_temperature: float | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationOutput:
    """One sampled response.

    ``prompt_index``: index of its prompt in the ``generate`` call; outputs come grouped by
    prompt, the ``n`` samples of a prompt contiguous. ``token_ids``: response tokens only
    (stop token included when one ended it). ``log_probs``: behaviour log-prob of each
    response token under the sampling distribution's model (same length as ``token_ids``),
    empty when not requested. ``finish_reason``: ``"stop"`` or ``"length"``.
    ``prompt_token_ids``: the prompt ids the engine generated from when it built them itself
    (its own processor expanding image placeholders, a re-tokenisation); ``None`` when it
    used the given ids as they are. The loop checks them against the ids it scores.
    """

    prompt_index: int
    token_ids: list[int]
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_token_ids: list[int] | None = None


class InferenceEngine(Component):
    """Rollout generator (``hf``, ``vllm``, ``sglang`` ...)."""

    kind: ClassVar[str] = "engine"
    #: Whether ``sleep``/``wake_up`` really release and restore memory (an engine may set it
    #: per instance, from its options or the platform).
    supports_sleep: bool = False
    #: Whether ``generate`` accepts prompts with media (``multimodal=``).
    supports_multimodal: ClassVar[bool] = False

    @property
    def shares_model(self) -> bool:
        """True when the engine generates with the trainer's own module (given to ``setup``
        as ``model``): the trained weights are already in place and the loop skips the
        weight sync. Default False: the engine holds its own copy and needs
        ``update_weights`` after every policy update."""
        return False

    def setup(
        self,
        *,
        model_path: str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        """Load the policy once, before the first ``generate``. Called by the training loop.

        ``model`` is the trainer's live policy module: an engine that can generate with it
        directly (``hf``) shares it and needs no weight copies. Engines with their own copy
        (vLLM, SGLang) load ``model_path`` (a Hugging Face folder) and later receive
        ``update_weights``. ``tokenizer`` gives the EOS and pad ids.
        """

    @abstractmethod
    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        multimodal: Sequence[MultiModalInputs | None] | None = None,
    ) -> list[GenerationOutput]:
        """Sample ``params.n`` responses for each prompt; returns ``len(prompts) * n`` outputs
        grouped by prompt in input order (none for an empty list).

        ``multimodal``: one entry per prompt (``None`` for a text-only prompt) when the
        prompts carry media; the loop passes it only to engines whose
        ``supports_multimodal`` is True. ``prompt_token_ids`` are then the processor's ids
        (image placeholders expanded) and the engine must generate from exactly those ids.

        Under ``torchrun`` the loop calls ``generate`` on every rank equally often, with an
        empty list on a rank that has nothing to generate, so an engine whose ranks step
        together (vLLM's data-parallel engines) can rely on it."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights (Hugging Face parameter names) into the running engine. May be
        fed in buckets: called several times, each with part of the model."""

    def sleep(self, level: int = 1) -> None:
        """Release memory while training runs (no-op unless ``supports_sleep``)."""

    def wake_up(self) -> None:
        """Restore what ``sleep`` released (no-op unless ``supports_sleep``)."""

    def shutdown(self) -> None:
        """Free every resource; the engine is not used afterwards."""
