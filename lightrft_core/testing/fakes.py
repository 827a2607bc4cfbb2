"""Fakes: real subclasses of the interfaces, small and deterministic, for tests."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..checkpoint import atomic_directory
from ..interfaces import (
    Actor,
    ActorOutput,
    GenerationOutput,
    InferenceEngine,
    MultiModalInputs,
    RewardInput,
    RewardModel,
    RewardOutput,
    SamplingParams,
    StrategyBase,
)
from ..interfaces.strategy import ReduceOp

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class FakeStrategy(StrategyBase):
    """Runs every strategy method in one process without a process group.

    Real arithmetic (backward, global-norm clipping, optimizer and scheduler steps,
    checkpoints on disk), plus ``calls``: the names of the methods called, in order.
    """

    name = "fake"

    @dataclass
    class Config:
        seed: int = field(default=0, metadata={"help": "Seed for torch and random."})

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.calls: list[str] = []

    def setup_distributed(self) -> None:
        self.calls.append("setup_distributed")
        torch.manual_seed(self.config.seed)
        random.seed(self.config.seed)

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, Any]:
        self.calls.append("prepare")
        return model, optimizer, scheduler

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        self.calls.append("backward")
        loss.backward()

    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        max_grad_norm: float | None = None,
    ) -> float:
        self.calls.append("optimizer_step")
        params = [p for p in model.parameters() if p.grad is not None]
        clip = max_grad_norm if max_grad_norm and max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.tensor(0.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def all_reduce(self, value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor:
        self.calls.append("all_reduce")
        return torch.as_tensor(value).clone()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls.append("all_gather")
        return tensor.clone()

    def barrier(self) -> None:
        self.calls.append("barrier")

    def save_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        client_state: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append("save_checkpoint")
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "client_state": dict(client_state or {}),
        }
        with atomic_directory(path) as tmp:
            torch.save(state, tmp / "state.pt")

    def load_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict[str, Any]:
        self.calls.append("load_checkpoint")
        file = Path(path) / "state.pt"
        if not file.is_file():
            raise FileNotFoundError(f"no checkpoint at {path} (expected {file})")
        state = torch.load(file, weights_only=False)
        model.load_state_dict(state["model"])
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        return state["client_state"]

    def export_hf(self, model: torch.nn.Module, path: str | Path, tokenizer: Any = None) -> None:
        self.calls.append("export_hf")
        with atomic_directory(path) as tmp:
            if hasattr(model, "save_pretrained"):
                cast("PreTrainedModel", model).save_pretrained(tmp)
            else:
                torch.save(model.state_dict(), tmp / "model.pt")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)


class FakeEngine(InferenceEngine):
    """Returns the same response token ids for every prompt and sample."""

    name = "fake"

    @dataclass
    class Config:
        response_token_ids: list[int] = field(
            default_factory=lambda: [5, 6, 7, 2],
            metadata={"help": "The response every sample gets (cut at a stop token)."},
        )
        log_prob: float = field(
            default=-0.5, metadata={"help": "Behaviour log-prob reported for every token."}
        )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.weight_updates: list[str] = []

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        multimodal: Sequence[MultiModalInputs | None] | None = None,
    ) -> list[GenerationOutput]:
        if multimodal is not None and any(m is not None for m in multimodal):
            raise ValueError("the fake engine takes text prompts only (supports_multimodal)")
        outputs = []
        for index, _ in enumerate(prompt_token_ids):
            for _ in range(params.n):
                tokens, finish = [], "length"
                for token in self.config.response_token_ids[: params.max_new_tokens]:
                    tokens.append(token)
                    if token in params.stop_token_ids:
                        finish = "stop"
                        break
                log_probs = [self.config.log_prob] * len(tokens) if params.return_log_probs else []
                outputs.append(GenerationOutput(index, tokens, log_probs, finish))
        return outputs

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.weight_updates.extend(name for name, _ in named_tensors)


class ConstantReward(RewardModel):
    """Gives every sample the same reward."""

    name = "constant"

    @dataclass
    class Config:
        value: float = field(default=1.0, metadata={"help": "The reward of every sample."})

        def __post_init__(self) -> None:
            if not math.isfinite(self.value):
                raise ValueError(f"value must be finite, got {self.value}")

    def score(self, batch: RewardInput) -> RewardOutput:
        rewards = torch.full((len(batch),), float(self.config.value), dtype=torch.float32)
        return RewardOutput(rewards=rewards, sub_scores={"constant": rewards.clone()})


class FakeActor(Actor):
    """A tiny language model (embedding + linear head) with exact log-prob arithmetic."""

    name = "fake"

    @dataclass
    class Config:
        vocab_size: int = field(default=32, metadata={"help": "Vocabulary size."})
        hidden_size: int = field(default=8, metadata={"help": "Embedding width."})
        seed: int = field(default=0, metadata={"help": "Seed of the initial weights."})

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(self.config.seed)
        self.embed = torch.nn.Embedding(self.config.vocab_size, self.config.hidden_size)
        self.head = torch.nn.Linear(self.config.hidden_size, self.config.vocab_size)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        return_entropy: bool = False,
        **modal_inputs: Any,
    ) -> ActorOutput:
        logits = self.head(self.embed(sequences[:, :-1])).float()  # [B, T-1, V]
        log_norm = torch.logsumexp(logits, dim=-1)  # [B, T-1]
        chosen = logits.gather(-1, sequences[:, 1:].unsqueeze(-1)).squeeze(-1)
        entropy = None
        if return_entropy:
            probs = torch.softmax(logits, dim=-1)
            entropy = log_norm - (probs * logits).sum(-1)
        return ActorOutput(log_probs=chosen - log_norm, entropy=entropy)

    def hf_model(self) -> torch.nn.Module:
        return self  # no Hugging Face model inside: the fake is its own model

    def named_weights_for_sync(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.state_dict().items():
            yield name, tensor.detach()
