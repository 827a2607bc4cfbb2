"""PPO's critic as the training loop drives it: ``PPOCritic`` implements the core's
``lightrft_core.interfaces.algorithm.Critic`` (the contract is in that module's docstring,
"A critic"; ``docs/algorithms/ppo.md`` shows the loop's calls).

Two layouts (``algorithm.critic``):

* ``separate``: a ``CriticModel`` of its own (trunk loaded from ``critic_path`` or the actor's
  ``model.path``, new value head), its own optimizer and scheduler, prepared by the strategy
  like the actor. Works with every strategy.
* ``shared``: a value head on the actor's trunk. The critic's optimizer holds the head only;
  the value loss, scaled by ``vf_coef``, also sends gradient into the trunk, which the
  actor's next ``optimizer_step`` applies together with the policy gradient -- so the trunk
  follows ``L_policy + vf_coef·L_value``. During the critic warm-up the trunk gets no value
  gradient (the actor does not step then): only the head learns, on frozen features.
  The trunk runs a second forward pass for the values. Tested with the ``local`` strategy;
  sharded strategies (FSDP, DeepSpeed) should use ``separate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightrft_core.interfaces.algorithm import Critic, CriticBatch

from .critic import CriticModel, ValueHead, decoder_of, hidden_size_of
from .value_loss import explained_variance

if TYPE_CHECKING:
    from lightrft_core.interfaces import StrategyBase

    from .ppo import PPO


@dataclass
class CriticSettings:
    """What the critic takes from the run's configuration besides the algorithm's options:
    how the actor's model is loaded (``model.*``) and the optimisation schedule
    (``trainer.*``). ``total_steps``: optimizer steps of the whole run (for the scheduler)."""

    model_path: str | None = None
    dtype: str = "float32"
    attn_implementation: str = "auto"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    max_grad_norm: float = 1.0

    @classmethod
    def from_run_config(cls, cfg: Any) -> CriticSettings:
        """From a ``LightRFTConfig``; ``total_steps`` counted as the loop counts its
        optimizer steps (``max_steps × epochs × optimizer batches per rollout``)."""
        options, t = cfg.model.options, cfg.trainer
        rollout_size = t.prompts_per_step * cfg.engine.n_samples_per_prompt
        per_step = t.epochs * math.ceil(rollout_size / (t.optimizer_batch_size or rollout_size))
        return cls(
            model_path=getattr(options, "path", None),
            dtype=getattr(options, "dtype", "float32"),
            attn_implementation=getattr(options, "attn_implementation", "auto"),
            trust_remote_code=getattr(options, "trust_remote_code", False),
            gradient_checkpointing=getattr(options, "gradient_checkpointing", False),
            weight_decay=t.weight_decay,
            lr_scheduler=t.lr_scheduler,
            warmup_steps=t.warmup_steps,
            total_steps=t.max_steps * per_step,
            max_grad_norm=t.max_grad_norm,
        )


def build_ppo_critic(
    algorithm: PPO, settings: CriticSettings, strategy: StrategyBase, actor: torch.nn.Module
) -> PPOCritic:
    """The critic ``algorithm.config.critic`` asks for, with its optimizer and scheduler
    created and prepared through ``strategy``. ``actor``: the prepared actor."""
    cfg = algorithm.config
    shared = cfg.critic == "shared"
    if shared:
        trunk = decoder_of(strategy.unwrap(actor))
        head = ValueHead(hidden_size_of(trunk), init_std=cfg.value_head_init_std)
        trained: torch.nn.Module = head
    else:
        path = cfg.critic_path or settings.model_path
        if path is None:
            raise ValueError(
                "ppo with critic: separate needs a model to start the critic from: set "
                "algorithm.critic_path, or model.path (the critic then starts from the actor)"
            )
        from lightrft_core.actors.language import DTYPES, resolve_attn_implementation

        model = CriticModel.from_pretrained(
            path,
            dtype=DTYPES[settings.dtype],
            attn_implementation=resolve_attn_implementation(
                settings.attn_implementation, settings.dtype
            ),
            trust_remote_code=settings.trust_remote_code,
            init_std=cfg.value_head_init_std,
        )
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        trained = model
    optimizer = strategy.create_optimizer(
        trained, lr=cfg.critic_learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = strategy.create_scheduler(
        optimizer,
        name=settings.lr_scheduler,
        warmup_steps=settings.warmup_steps,
        total_steps=max(1, settings.total_steps),
    )
    trained, prepared_optimizer, scheduler = strategy.prepare(trained, optimizer, scheduler)
    optimizer = prepared_optimizer if prepared_optimizer is not None else optimizer
    value_model = CriticModel(trunk, trained) if shared else trained
    return PPOCritic(
        algorithm,
        strategy,
        value_model=value_model,
        trained=trained,
        optimizer=optimizer,
        scheduler=scheduler,
        max_grad_norm=settings.max_grad_norm,
        shared=shared,
    )


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration; restores every submodule's own train flag (a shared
    trunk keeps the mode the actor had)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class PPOCritic(Critic):
    """The critic of ``ppo`` (module docstring). ``value_model``: the module that maps
    ``(sequences, attention_mask)`` to values ``[B, T-1]``; ``trained``: the module the
    optimizer steps (the prepared critic itself when separate, the value head when shared)."""

    def __init__(
        self,
        algorithm: PPO,
        strategy: StrategyBase,
        *,
        value_model: torch.nn.Module,
        trained: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        max_grad_norm: float,
        shared: bool,
    ) -> None:
        self.algorithm = algorithm
        self.strategy = strategy
        self.value_model = value_model
        self.trained = trained
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.shared = shared

    @property
    def kind(self) -> str:
        return "shared" if self.shared else "separate"

    # ------------------------------------------------------------------ values
    @torch.no_grad()
    def compute_values(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, *, micro_batch_size: int
    ) -> torch.Tensor:
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        b, t = sequences.shape
        out = torch.zeros((b, max(t - 1, 0)), dtype=torch.float32, device=sequences.device)
        device = self.strategy.device
        positions = torch.arange(t, device=attention_mask.device)
        with _eval_mode(self.value_model):
            for rows in torch.arange(b, device=sequences.device).split(micro_batch_size):
                mask = attention_mask[rows].bool()
                # up to the last real token of these rows (right padding is cut off)
                length = int(torch.where(mask, positions + 1, 0).max())
                if length < 2:
                    continue
                with self.strategy.autocast():
                    values = self.value_model(
                        sequences[rows, :length].to(device),
                        attention_mask[rows, :length].to(device),
                    )
                out[rows, : length - 1] = values.float().to(out.device)
        return out

    def rollout_metrics(
        self, values: torch.Tensor, returns: torch.Tensor, action_mask: torch.Tensor
    ) -> dict[str, float]:
        stats = explained_variance(
            values, returns, action_mask, all_reduce=self.strategy.all_reduce
        )
        return {f"critic/{key}": value for key, value in stats.items()}

    # ------------------------------------------------------------------ training
    def train_micro_batch(
        self, batch: CriticBatch, *, step: int, sync_gradients: bool = True
    ) -> dict[str, float]:
        algorithm, strategy = self.algorithm, self.strategy
        # a shared trunk learns from the value loss only when the actor steps
        trunk_gradients = not self.shared or algorithm.updates_policy(step)
        device = strategy.device
        mask = batch.action_mask.to(device)
        context = nullcontext() if sync_gradients else strategy.no_sync(self.trained)
        with context:
            with strategy.autocast():
                values = self.value_model(
                    batch.sequences.to(device),
                    batch.attention_mask.to(device),
                    trunk_gradients=trunk_gradients,
                )
            out = algorithm.value_loss(
                values.float(),
                batch.old_values.to(device),
                batch.returns.to(device),
                mask,
                batch.scale,
            )
            loss = out.loss * algorithm.config.vf_coef if self.shared else out.loss
            strategy.backward(loss, self.trained)
        return {f"critic/{key}": float(value) for key, value in out.metrics.items()}

    def optimizer_step(self) -> float:
        return self.strategy.optimizer_step(
            self.trained, self.optimizer, self.scheduler, max_grad_norm=self.max_grad_norm
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> None:
        self.strategy.save_checkpoint(
            path,
            model=self.trained,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            client_state={"critic": self.kind},
        )

    def load(self, path: str | Path) -> None:
        try:
            state = self.strategy.load_checkpoint(
                path, model=self.trained, optimizer=self.optimizer, scheduler=self.scheduler
            )
        except RuntimeError as err:  # e.g. a head-only checkpoint into a whole critic
            raise ValueError(
                f"{path}: cannot restore this run's {self.kind!r} critic from it (did "
                f"algorithm.critic change between the runs?): {err}"
            ) from err
        if state.get("critic") != self.kind:
            raise ValueError(
                f"{path} holds a {state.get('critic')!r} critic, this run has a {self.kind!r} "
                "one (algorithm.critic changed between the runs)"
            )

    def export_hf(self, path: str | Path, tokenizer: Any = None) -> None:
        """Separate: the whole critic (trunk + head, ``CriticModel.from_pretrained``
        reloads it). Shared: the value head only (the trunk is the exported actor)."""
        self.strategy.export_hf(self.trained, path, tokenizer if not self.shared else None)
