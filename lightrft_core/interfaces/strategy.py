"""``StrategyBase``: how a model is trained on the available devices.

The training loop is the only caller. One optimizer step of the loop is::

    optimizer = strategy.create_optimizer(model, lr=...)                           # once
    scheduler = strategy.create_scheduler(optimizer, name="cosine", ...)          # once
    model, optimizer, scheduler = strategy.prepare(model, optimizer, scheduler)   # once
    for micro_batch in batch:                       # gradient accumulation
        loss = ...                                  # already scaled, see LossScale
        strategy.backward(loss, model)
    grad_norm = strategy.optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)

Every process of a data-parallel job runs the same calls (SPMD); collective methods
(``all_reduce``, ``all_gather``, ``barrier``, checkpointing) must be called by every rank.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from .component import Component

ReduceOp = Literal["mean", "sum", "max", "min"]


class StrategyBase(Component):
    """Distributed-training backend (``local``, ``fsdp``, ``deepspeed`` ...)."""

    kind: ClassVar[str] = "strategy"

    # ------------------------------------------------------------------ process group
    @abstractmethod
    def setup_distributed(self) -> None:
        """Join (or create) the process group and pick the device. Called once, before
        anything else (the run then seeds every RNG with ``run.seed``). A group the strategy
        creates must be destroyed before the interpreter shuts down:
        ``lightrft_core.distributed.init_process_group`` arranges it."""

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's global rank (0 on one process)."""

    @property
    @abstractmethod
    def world_size(self) -> int:
        """Number of processes (1 on one process)."""

    @property
    def sequence_parallel_size(self) -> int:
        """Ranks that split each sequence between them (Ulysses); 1, the default, when every
        rank holds whole sequences. ``lightrft train``, ``sft`` and ``rm`` split them."""
        return 1

    @property
    def sequence_parallel_group(self) -> Any:
        """The ``torch.distributed`` group of the ranks that split this rank's sequences;
        ``None`` when ``sequence_parallel_size`` is 1."""
        return None

    @property
    def data_parallel_rank(self) -> int:
        """Which share of the rows this rank holds (the ranks of one sequence-parallel
        group hold the same rows): ``rank`` by default."""
        return self.rank

    @property
    def data_parallel_size(self) -> int:
        """How many shares the rows are cut into: ``world_size / sequence_parallel_size``;
        ``world_size`` by default."""
        return self.world_size

    @property
    def data_parallel_group(self) -> Any:
        """The ``torch.distributed`` group of the ranks that hold different rows and the
        same place in their sequence-parallel groups; ``None`` (every rank) by default."""
        return None

    @property
    def is_rank_0(self) -> bool:
        """True on the process that writes logs, plots and exports."""
        return self.rank == 0

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device that inputs must be moved to before a forward pass."""

    # ------------------------------------------------------------------ training
    @abstractmethod
    def prepare(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, Any]:
        """Wrap/shard ``model`` and bind ``optimizer``/``scheduler`` to it.

        Returns the objects the loop must use from now on (they may be wrappers). A model
        without optimizer (reference model, reward model) is prepared for inference only.
        """

    def create_optimizer(
        self,
        model: torch.nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        implementation: str = "auto",
    ) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (no weight decay on biases and norms), with
        the kernel ``implementation`` picks for this strategy's device (``optim.adamw_flags``).
        Called once before ``prepare``; strategies with their own optimizers override it."""
        from ..optim import adamw

        return adamw(
            model,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            implementation=implementation,
            device=self.device,
        )

    def create_scheduler(
        self, optimizer: torch.optim.Optimizer, *, name: str, warmup_steps: int, total_steps: int
    ) -> Any:
        """Learning-rate schedule stepped once per optimizer step: linear warm-up, then
        ``constant`` or ``cosine`` decay to 0 at ``total_steps``."""
        from ..optim import lr_schedule

        return lr_schedule(optimizer, name=name, warmup_steps=warmup_steps, total_steps=total_steps)

    @abstractmethod
    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        """Accumulate gradients of the scalar ``loss`` (fp32, shape ``[]``).

        The loss is already scaled so that the sum over micro-batches (and ranks) is the
        loss of the whole optimizer batch; the strategy must not rescale it.
        """

    @abstractmethod
    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        max_grad_norm: float | None = None,
    ) -> float:
        """Reduce gradients across ranks, clip to ``max_grad_norm`` (global norm over all
        shards; ``None`` or ``<= 0`` disables clipping), step the optimizer and scheduler,
        zero the gradients. Returns the global gradient norm before clipping."""

    def autocast(self) -> AbstractContextManager[Any]:
        """Context for forward passes (mixed precision); the loop wraps every forward in it.
        The default does nothing; strategies with a bf16 option return ``torch.autocast``."""
        return nullcontext()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The user's module inside whatever wrapper ``prepare`` returned."""
        return model

    def weights_for_sync(self, actor: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """The prepared ``actor``'s ``Actor.named_weights_for_sync()``, with whatever this
        strategy must do around it (e.g. gather ZeRO-3 partitions while it runs). Collective:
        every rank drains it. The default unwraps the actor and asks it."""
        from .actor import Actor

        module = self.unwrap(actor)
        if not isinstance(module, Actor):
            raise TypeError(
                f"weights_for_sync needs a prepared lightrft_core.interfaces.Actor, got "
                f"{type(module).__name__}"
            )
        return module.named_weights_for_sync()

    # ------------------------------------------------------------------ loop contexts
    def model_init_context(self) -> AbstractContextManager[Any]:
        """Where the loop builds models (actor, reference, critic), before ``prepare``.

        A sharded strategy may build structure only here (e.g. on the meta device on ranks
        other than 0) and fill the weights in ``prepare``. The default does nothing."""
        return nullcontext()

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """Backward passes inside accumulate gradients of ``model`` without communication.

        The loop enters it for every micro-batch of an optimizer batch but the last, so a
        data-parallel strategy reduces gradients once per optimizer step. The default does
        nothing (gradients are reduced in ``optimizer_step`` anyway)."""
        return nullcontext()

    def generation_context(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """The whole of ``model`` usable on every rank while the body runs: the loop enters
        it around ``engine.generate`` and evaluation, when the engine generates with the
        training module (the ``hf`` engine). No collective may run inside (ranks generate
        different numbers of tokens), so a sharded strategy gathers the parameters on entry
        (FSDP, DeepSpeed ZeRO-3) and frees them on exit. The default does nothing."""
        return nullcontext()

    # ------------------------------------------------------------------ collectives
    @abstractmethod
    def all_reduce(self, value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor:
        """Reduce a tensor (or Python number) over all ranks; returns a new tensor."""

    @abstractmethod
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` from every rank along dim 0 (rank order)."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank reaches this point."""

    # ------------------------------------------------------------------ checkpoints
    @abstractmethod
    def save_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        client_state: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a resumable checkpoint: model, optimizer, scheduler, RNG states and
        ``client_state`` (step, data position ...). Must be atomic: a crash during the save
        leaves the previous checkpoint at ``path`` intact."""

    @abstractmethod
    def load_checkpoint(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict[str, Any]:
        """Restore what ``save_checkpoint`` wrote (in place) and return its ``client_state``."""

    @abstractmethod
    def export_hf(self, model: torch.nn.Module, path: str | Path, tokenizer: Any = None) -> None:
        """Write a full (unsharded) Hugging Face model folder; rank 0 writes, all ranks call.
        ``tokenizer``: saved beside the weights (``save_pretrained``): a tokenizer, or a
        processor, which writes its tokenizer too."""
