"""``PretrainedActor``: what every actor around a Hugging Face model shares (the model held
as ``self.model``, inside its peft wrapper when LoRA is on).

The built-in ``language`` actor and the plugins' media actors subclass it and add their
loading, LoRA targets and forward; the parts here (wrapping an existing model, the base
model under the adapters, gradient checkpointing, LoRA wrapping, the masked log-prob output,
weight sync) are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from ..interfaces import Actor, ActorOutput
from .encoders import freeze_under, lora_linear_names
from .logprobs import chunked_token_log_probs
from .options import CHECKPOINT_KWARGS, dtype_name
from .weights import merged_weights

A = TypeVar("A", bound="PretrainedActor")


class PretrainedActor(Actor):
    """An actor around a Hugging Face model; ``Config`` extends ``PretrainedActorOptions``."""

    model: torch.nn.Module

    @classmethod
    def from_model(cls: type[A], model: Any, config: Any = None) -> A:
        """Wrap an existing model; cast to ``config.dtype`` (kept without ``config``). With
        LoRA on, the adapters are injected into ``model`` itself (peft works in place)."""
        if config is None:
            config = cls.Config(dtype=dtype_name(model.dtype))
        return cls(config, model=model)  # type: ignore[call-arg]

    # ---------------------------------------------------------------- model parts
    @classmethod
    def hf_path(cls, config: Any) -> str | None:
        path: str | None = config.path
        return path

    def hf_model(self) -> torch.nn.Module:
        """The transformers model, inside its peft wrapper when LoRA is on."""
        return self.model

    @property
    def base_model(self) -> Any:
        """The transformers model (the one inside the peft wrapper when LoRA is on)."""
        model: Any = self.model
        return model.get_base_model() if self._has_lora else model

    @property
    def _has_lora(self) -> bool:
        return type(self.model).__module__.startswith("peft.")

    def _with_lora(self, model: torch.nn.Module, targets: list[str], **options: Any) -> Any:
        """``model`` with LoRA adapters (the options' rank, alpha, dropout) on ``targets``;
        ``options``: further ``LoraConfig`` fields."""
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            **options,
        )
        return get_peft_model(model, lora)

    def _hold(
        self, model: torch.nn.Module, *, lora_exclude: Sequence[str], frozen: Sequence[str]
    ) -> None:
        """Hold ``model`` as ``self.model``: with LoRA on (``lora_rank > 0``), adapters on
        its linear layers named in ``lora_target_modules`` (every one when null) outside the
        prefixes ``lora_exclude`` (``encoders.py``); the parameters under the prefixes
        ``frozen`` not trained; gradient checkpointing on when the options ask."""
        cfg = self.config
        if cfg.lora_rank > 0:
            targets = lora_linear_names(model, cfg.lora_target_modules, exclude=lora_exclude)
            model = self._with_lora(model, targets)
        self.model = model
        freeze_under(self.base_model, frozen)
        if cfg.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    def gradient_checkpointing_enable(self) -> None:
        """Checkpoint every layer (non-reentrant); turns the KV cache off."""
        base = self.base_model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINT_KWARGS)
        base.config.use_cache = False

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing_disable()

    # ---------------------------------------------------------------- forward
    def _scored(
        self,
        states: torch.Tensor,
        sequences: torch.Tensor,
        valid: torch.Tensor,
        head: Any,
        *,
        return_entropy: bool,
    ) -> ActorOutput:
        """The log-probs (and entropies) ``[B, T-1]`` fp32 of each next token of
        ``sequences`` where ``valid`` (0 elsewhere), from the hidden states ``states``
        ``[B, T, H]`` and the output ``head`` applied chunk by chunk (``logprobs.py``), or
        from logits ``[B, T, V]`` when ``head`` is ``None``."""
        log_probs, entropy = chunked_token_log_probs(
            states[:, :-1][valid],  # [N, H]
            sequences[:, 1:][valid],  # [N]
            head,
            chunk_size=self.config.logprob_chunk_size,
            return_entropy=return_entropy,
        )
        zeros = torch.zeros(valid.shape, dtype=torch.float32, device=sequences.device)
        return ActorOutput(
            log_probs=zeros.masked_scatter(valid, log_probs),
            entropy=zeros.masked_scatter(valid, entropy) if entropy is not None else None,
        )

    # ---------------------------------------------------------------- weight sync
    def named_weights_for_sync(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the Hugging Face model's ``state_dict`` names, LoRA merged in
        (adapter tensors not listed); sharded weights gathered one by one on every rank
        (``weights.py``)."""
        yield from merged_weights(self.base_model)
