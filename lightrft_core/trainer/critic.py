"""The critic the RL loop trains beside the actor when ``algorithm.needs_critic()`` is True.
The contract is in ``lightrft_core/interfaces/algorithm.py`` ("A critic"), the model in
``lightrft_core/models/critic.py``. The algorithm chooses the critic (``critic_spec``) and
gives its loss (``value_loss``); this module builds, prepares, trains, checkpoints and
exports it through the strategy, like the actor.

Files: the critic's checkpoint is ``<step dir>/critic`` (written after the actor's), its
export ``<output_dir>/final_critic``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..actors.packing import (
    pack_padded_rows,
    packed_model_inputs,
    packs_into_one_row,
    unpack_to_padded,
)
from ..actors.varlen_attention import check_segments_read
from ..config.schema import TrainerConfig
from ..interfaces import (
    Actor,
    ActorModality,
    Algorithm,
    CriticSpec,
    LossScale,
    StrategyBase,
    ValueLossInput,
)
from ..models.critic import CriticModel, ValueHead, hidden_size_of, trunk_options_of
from .distributed import data_ranks, model_init_context
from .experience import RolloutBatch
from .micro_batches import agree_over_ranks, plan_micro_batches

#: The critic's folder inside a step's checkpoint folder.
CRITIC_DIR = "critic"
#: The exported critic, beside ``final``.
FINAL_CRITIC_DIR = "final_critic"


def build_critic(
    algorithm: Algorithm,
    strategy: StrategyBase,
    actor: Actor,
    *,
    trainer: TrainerConfig,
    total_steps: int,
    actor_path: str | None,
) -> LoopCritic | None:
    """The critic ``algorithm.critic_spec()`` asks for, with its optimizer and scheduler
    (``trainer``'s schedule over ``total_steps`` optimizer steps, peak rate
    ``trainer.critic_learning_rate``), prepared by ``strategy``; ``None`` when the algorithm
    needs no critic. ``actor``: the prepared policy (unwrapped): a separate trunk is loaded
    as its Hugging Face model was, a shared critic uses that model's trunk, and the critic
    reads every batch as the actor prepares it (``Actor.trunk_inputs``: positions, media).
    ``actor_path``: the actor's checkpoint, where a separate critic starts unless the spec
    names a path."""
    if not algorithm.needs_critic():
        return None
    if type(algorithm).value_loss is Algorithm.value_loss:
        raise TypeError(
            f"algorithm {algorithm.name!r} says needs_critic() but does not define value_loss"
        )
    spec = algorithm.critic_spec()
    shared = spec.layout == "shared"
    with model_init_context(strategy):  # fsdp meta_init: structure only on ranks > 0
        critic = _critic_model(spec, actor, actor_path, algorithm.name)
    trained: torch.nn.Module = critic.value_head if shared else critic
    optimizer = strategy.create_optimizer(
        trained,
        lr=trainer.critic_learning_rate,
        weight_decay=trainer.weight_decay,
        implementation=trainer.adamw_implementation,
    )
    scheduler = strategy.create_scheduler(
        optimizer,
        name=trainer.lr_scheduler,
        warmup_steps=trainer.warmup_steps,
        total_steps=max(1, total_steps),
    )
    prepared, prepared_optimizer, scheduler = strategy.prepare(trained, optimizer, scheduler)
    return LoopCritic(
        algorithm,
        strategy,
        actor,
        spec=spec,
        value_model=critic if shared else prepared,
        trained=prepared,
        optimizer=prepared_optimizer if prepared_optimizer is not None else optimizer,
        scheduler=scheduler,
        max_grad_norm=trainer.max_grad_norm,
        packing=trainer.packing is True and actor.modality == ActorModality.LANGUAGE_ONLY,
        max_tokens_per_micro_batch=trainer.max_tokens_per_micro_batch,
    )


def _critic_model(
    spec: CriticSpec, actor: Actor, actor_path: str | None, algorithm: str
) -> CriticModel:
    """A new head on the actor's trunk (shared: ``Actor.trunk``, the model without its
    output head, with its media encoders if it has any), or a trunk of the actor's
    architecture (``Actor.load_trunk``) loaded as the actor's model was, from the spec's
    path or the actor's checkpoint (separate)."""
    if spec.layout == "shared":
        trunk = actor.trunk()
        head = ValueHead(hidden_size_of(trunk), init_std=spec.head_init_std)
        return CriticModel(trunk, head, actor_class=type(actor))
    path = spec.path or actor_path
    if path is None:
        raise ValueError(
            f"algorithm {algorithm!r} needs a separate critic but there is no model to start "
            "it from: the actor loads no checkpoint and the algorithm sets no critic path"
        )
    options = trunk_options_of(actor.hf_model())
    return CriticModel.from_pretrained(
        path, options, init_std=spec.head_init_std, actor_class=type(actor)
    )


class LoopCritic:
    """A prepared critic and its optimizer, as the loop drives it. ``value_model`` maps
    ``(sequences, attention_mask)`` to values ``[B, T-1]``; ``trained`` is the prepared
    module the optimizer steps (the whole critic when separate, the head when shared).
    ``packing``: read packed rows (``trainer.packing``, a text-only actor: the critic of a
    media actor reads padded rows), values returned padded;
    ``max_tokens_per_micro_batch``: the value pass's token budget (``micro_batches.py``)."""

    def __init__(
        self,
        algorithm: Algorithm,
        strategy: StrategyBase,
        actor: Actor,
        *,
        spec: CriticSpec,
        value_model: torch.nn.Module,
        trained: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        max_grad_norm: float,
        packing: bool = False,
        max_tokens_per_micro_batch: int | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.strategy = strategy
        self.actor = actor
        self.spec = spec
        self.value_model = value_model
        self.trained = trained
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.packing = packing
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch

    @property
    def shared(self) -> bool:
        return self.spec.layout == "shared"

    def _values(
        self, batch: RolloutBatch, length: int | None = None, *, trunk_gradients: bool = True
    ) -> torch.Tensor:
        """The critic's forward on ``batch`` (its first ``length`` positions), with the
        trunk inputs the actor prepares (its positions, the rows' media)."""
        device = self.strategy.device
        sequences = batch.sequences[:, :length].to(device)
        attention_mask = batch.attention_mask[:, :length].to(device)
        media = {k: v.to(device) for k, v in self.actor.select_inputs(batch.modal_inputs()).items()}
        if self.packing:
            return self._packed_values(sequences, attention_mask, trunk_gradients)

        def trunk_inputs(trunk: Any) -> dict[str, Any]:
            return self.actor.trunk_inputs(trunk, sequences, attention_mask, **media)

        with self.strategy.autocast():
            return self.value_model(
                sequences,
                attention_mask,
                trunk_inputs=trunk_inputs,
                trunk_gradients=trunk_gradients,
            )

    def _packed_values(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, trunk_gradients: bool
    ) -> torch.Tensor:
        """``_values`` of text rows read packed (``actors/packing.py``), returned padded."""
        one_row = packs_into_one_row(self.actor.hf_model())
        packed = pack_padded_rows(sequences, attention_mask, one_row=one_row)

        built: list[dict[str, Any]] = []

        def trunk_inputs(trunk: Any) -> dict[str, Any]:
            built.append(
                packed_model_inputs(trunk.config._attn_implementation, packed, trunk.dtype)
            )
            return built[-1]

        with self.strategy.autocast():
            values = self.value_model(
                packed.sequences,
                packed.attention_mask,
                trunk_inputs=trunk_inputs,
                trunk_gradients=trunk_gradients,
            )
        for inputs in built:  # the single-row SDPA path: its attention read the sequences
            check_segments_read(inputs, self.actor.hf_model())
        return unpack_to_padded(values, packed.spans, sequences.shape[1] - 1)

    # ------------------------------------------------------------------ values
    @torch.no_grad()
    def values(self, rollout: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        """The rollout's old values ``[B, T-1]`` (float32, on the rollout's device), 0
        outside the response tokens; ``micro_batch_size`` rows per forward pass, or the
        token budget's micro-batches (``plan_micro_batches``, a collective under
        ``torchrun``)."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        sequences, attention_mask = rollout.sequences, rollout.attention_mask
        b, t = sequences.shape
        out = torch.zeros((b, max(t - 1, 0)), dtype=torch.float32, device=sequences.device)
        positions = torch.arange(t, device=attention_mask.device)
        plan = plan_micro_batches(
            attention_mask.sum(-1).cpu(),
            micro_batch_size=micro_batch_size,
            max_tokens=self.max_tokens_per_micro_batch,
            packing=self.packing,
            agree=agree_over_ranks(self.strategy),
        )
        with _eval_mode(self.value_model):
            for rows in (group.to(sequences.device) for group in plan):
                mask = attention_mask[rows].bool()
                # up to the last real token of these rows (right padding is cut off)
                length = int(torch.where(mask, positions + 1, 0).max())
                if length < 2:
                    continue
                values = self._values(rollout.select(rows), length)
                out[rows, : length - 1] = values.float().to(out.device)
        return out * rollout.action_mask.to(out.device)

    def rollout_metrics(self, rollout: RolloutBatch) -> dict[str, float]:
        """``critic/explained_variance``, ``critic/value_mean`` and ``critic/return_mean`` of
        the rollout's old values against its returns, over every rank. Collective."""
        if rollout.values is None or rollout.returns is None:
            return {}
        rows = data_ranks(self.strategy)  # a sequence-parallel group's rows counted once
        stats = explained_variance(
            rollout.values, rollout.returns, rollout.action_mask, rows.all_reduce
        )
        return {f"critic/{key}": value for key, value in stats.items()}

    # ------------------------------------------------------------------ training
    def train_micro_batch(
        self, mb: RolloutBatch, scale: LossScale, *, step: int, sync_gradients: bool
    ) -> dict[str, float]:
        """Forward, ``algorithm.value_loss`` and backward of one micro-batch (gradients
        accumulate until ``optimizer_step``; ``sync_gradients=False`` on every micro-batch
        of an optimizer batch but the last). Returns its per-token mean metrics."""
        if mb.values is None or mb.returns is None:
            raise ValueError(
                "the critic trains on the rollout's old values and returns: the algorithm's "
                "compute_advantages must return AdvantageOutput.returns when it needs a critic"
            )
        strategy, device = self.strategy, self.strategy.device
        # a shared trunk learns from the value loss only when the actor steps
        trunk_gradients = not self.shared or self.algorithm.updates_policy(step)
        context = nullcontext() if sync_gradients else strategy.no_sync(self.trained)
        with context:
            values = self._values(mb, trunk_gradients=trunk_gradients)
            out = self.algorithm.value_loss(
                ValueLossInput(
                    values=values.float(),
                    old_values=mb.values.to(device),
                    returns=mb.returns.to(device),
                    action_mask=mb.action_mask.to(device),
                    scale=scale,
                )
            )
            strategy.backward(out.loss, self.trained)
        return {f"critic/{key}": float(value) for key, value in out.metrics.items()}

    def optimizer_step(self) -> float:
        """Clip (``trainer.max_grad_norm``), step, schedule, zero; the gradient norm."""
        return self.strategy.optimizer_step(
            self.trained, self.optimizer, self.scheduler, max_grad_norm=self.max_grad_norm
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, step_dir: Path) -> None:
        """The critic's checkpoint in ``step_dir/critic``. Collective."""
        self.strategy.save_checkpoint(
            step_dir / CRITIC_DIR,
            model=self.trained,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            client_state={"critic": self.spec.layout},
        )

    def load(self, step_dir: Path) -> None:
        """Restore what ``save`` wrote into the checkpoint ``step_dir``. Collective."""
        folder = step_dir / CRITIC_DIR
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{step_dir} holds no critic ({CRITIC_DIR}/ is missing): it was written by a "
                "run without a critic, or the run stopped while saving it; resume from an "
                "earlier checkpoint (trainer.resume_from=PATH)"
            )
        layout = self.spec.layout
        try:
            state = self.strategy.load_checkpoint(
                folder, model=self.trained, optimizer=self.optimizer, scheduler=self.scheduler
            )
        except (RuntimeError, ValueError) as err:  # e.g. a head-only checkpoint into a critic
            raise ValueError(
                f"{folder}: cannot restore this run's {layout!r} critic from it (did the "
                f"critic's layout change between the runs?): {err}"
            ) from err
        if state.get("critic") != layout:
            raise ValueError(
                f"{folder} holds a {state.get('critic')!r} critic, this run has a {layout!r} "
                "one (the critic's layout changed between the runs)"
            )

    def export(self, output_dir: Path, tokenizer: Any = None) -> Path:
        """``output_dir/final_critic``: a separate critic whole (trunk, head and tokenizer;
        ``CriticModel.from_pretrained`` reloads it), a shared one as its head alone (the
        trunk is the exported actor). Collective."""
        path = output_dir / FINAL_CRITIC_DIR
        self.strategy.export_hf(self.trained, path, None if self.shared else tokenizer)
        return path


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


def explained_variance(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    all_reduce: Callable[..., torch.Tensor] | None = None,
) -> dict[str, float]:
    """``explained_variance``, ``value_mean`` and ``return_mean`` over the True entries of
    ``mask`` (``[B, T]`` like ``values`` and ``returns``) of every rank:
    ``EV = 1 − Var(G − V) / Var(G)`` (population variances); 1 is a perfect critic, 0 a
    constant one, negative worse than a constant, and 0 when the returns have no spread (or
    there is no token). ``all_reduce``: the strategy's (one ``sum`` call); ``None`` for one
    process."""
    mask = mask.bool()
    v = torch.where(mask, values.detach().double(), 0.0)
    g = torch.where(mask, returns.detach().double(), 0.0)
    residual = g - v
    sums = torch.stack(
        [
            mask.sum().double(),
            g.sum(),
            g.square().sum(),
            residual.sum(),
            residual.square().sum(),
            v.sum(),
        ]
    )
    if all_reduce is not None:
        sums = torch.as_tensor(all_reduce(sums, op="sum")).double()
    count, g_sum, g_sq, r_sum, r_sq, v_sum = (float(x) for x in sums)
    if count == 0:
        return {"explained_variance": 0.0, "value_mean": 0.0, "return_mean": 0.0}
    var_returns = max(g_sq / count - (g_sum / count) ** 2, 0.0)
    var_residual = max(r_sq / count - (r_sum / count) ** 2, 0.0)
    explained = 1.0 - var_residual / var_returns if var_returns > 1e-12 else 0.0
    return {
        "explained_variance": explained,
        "value_mean": v_sum / count,
        "return_mean": g_sum / count,
    }
