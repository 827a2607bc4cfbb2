"""Rollout batches: prompt + response token tensors, masks, and per-token quantities.

Layout of one row (right padding)::

    sequences[i] = prompt tokens (Lp) | response tokens (Lr) | pad ...
    action_mask[i, t] is True when sequences[i, t + 1] is a response token, i.e. for
    t in [Lp - 1, Lp - 1 + Lr) -- per-token tensors have T - 1 positions (see actor.py).

A row's media (``multimodal[i]``: its prompt's ``MultiModalInputs``, ``None`` for a
text-only row) stay with the row: ``select`` picks them, ``to`` moves their tensors, and
``modal_inputs`` concatenates them in row order for one forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from ..interfaces import GenerationOutput, MultiModalInputs, collate_modal_inputs


@dataclass
class RolloutBatch:
    """One step's experience. ``B`` rows (samples), grouped by prompt (``group_size``)."""

    sequences: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64
    action_mask: torch.Tensor  # [B, T-1] bool
    rewards: torch.Tensor  # [B] float32
    engine_log_probs: torch.Tensor  # [B, T-1] float32, 0 outside action_mask
    group_size: int
    old_log_probs: torch.Tensor | None = None  # [B, T-1]
    # [B, T-1] the trainer's log-probs under the rollout's weights (the old-log-prob pass or
    # the first training forward), compared with ``engine_log_probs`` (logprob_mismatch)
    trainer_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None  # [B, T-1]
    values: torch.Tensor | None = None  # [B, T-1], the critic's old values
    advantages: torch.Tensor | None = None  # [B, T-1]
    returns: torch.Tensor | None = None  # [B, T-1], the critic's targets
    multimodal: list[MultiModalInputs | None] | None = None  # [B], None: no row has media

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def to(self, device: torch.device) -> RolloutBatch:
        """The same batch with every tensor on ``device`` (a no-op on the same device)."""
        return _moved(self, device)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.action_mask.sum(dim=1)

    def modal_inputs(self, keys: frozenset[str] | None = None) -> dict[str, torch.Tensor]:
        """The rows' media tensors concatenated in row order (``collate_modal_inputs``),
        only ``keys`` when given; empty when no row has media."""
        return collate_modal_inputs(self.multimodal or [], keys)

    def select(self, rows: torch.Tensor | Sequence[int]) -> RolloutBatch:
        """The rows ``rows``, trimmed to their longest sequence (less padding to compute)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        length = int(self.attention_mask[rows].sum(dim=1).max())
        picked: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[rows]
                if value.dim() == 2:  # [B, T] tensors keep `length`, per-token ones `length - 1`
                    full = value.shape[1] == self.sequences.shape[1]
                    value = value[:, : length if full else length - 1]
            picked[f.name] = value
        if self.multimodal is not None:
            picked["multimodal"] = [self.multimodal[int(row)] for row in rows]
        return replace(self, **picked)


def _moved(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    moved: dict[str, Any] = {
        f.name: getattr(batch, f.name).to(device)
        for f in fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    if batch.multimodal is not None:
        moved["multimodal"] = [None if m is None else m.to(device) for m in batch.multimodal]
    return replace(batch, **moved)


def build_rollout(
    prompt_ids: Sequence[Sequence[int]],
    outputs: Sequence[GenerationOutput],
    rewards: torch.Tensor,
    *,
    group_size: int,
    pad_id: int,
    multimodal: Sequence[MultiModalInputs | None] | None = None,
) -> RolloutBatch:
    """Assemble the tensors of a rollout from the engine's outputs (in output order).
    ``multimodal``: each prompt's media (like ``prompt_ids``), kept per row when a prompt
    has any."""
    rows = [list(prompt_ids[o.prompt_index]) + list(o.token_ids) for o in outputs]
    width = max(len(r) for r in rows)
    # one tensor per field from padded Python lists: no per-row tensor ops
    starts = [len(prompt_ids[o.prompt_index]) - 1 for o in outputs]
    sequences = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    attention_mask = (torch.arange(width) < lengths[:, None]).long()
    first = torch.tensor(starts)[:, None]
    ends = first + torch.tensor([len(o.token_ids) for o in outputs])[:, None]
    positions = torch.arange(width - 1)
    action_mask = (positions >= first) & (positions < ends)
    engine_log_probs = torch.tensor(
        [
            [0.0] * start
            + list(o.log_probs or [0.0] * len(o.token_ids))
            + [0.0] * (width - 1 - start - len(o.token_ids))
            for start, o in zip(starts, outputs, strict=True)
        ],
        dtype=torch.float32,
    )
    return RolloutBatch(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        rewards=rewards.float(),
        engine_log_probs=engine_log_probs,
        group_size=group_size,
        multimodal=_row_media(multimodal, outputs),
    )


def _row_media(
    multimodal: Sequence[MultiModalInputs | None] | None, outputs: Sequence[GenerationOutput]
) -> list[MultiModalInputs | None] | None:
    """Each output row's prompt media; ``None`` when no prompt has any."""
    if multimodal is None or all(item is None for item in multimodal):
        return None
    return [multimodal[o.prompt_index] for o in outputs]


def shuffled_chunks(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """A random permutation of ``range(n)`` cut into chunks of ``size`` (last may be short)."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(size)


#: Where a step's old log-probs come from: ``pass``, a forward of their own before training;
#: ``train``, the training forward (detached); ``engine``, the engine's behaviour log-probs.
OldLogProbSource = Literal["pass", "train", "engine"]


def old_log_probs_source(
    mode: str, *, updates_per_step: int, updates_policy: bool, advantages_use_them: bool
) -> OldLogProbSource:
    """``trainer.old_logprobs`` (``auto``/``recompute``/``engine``) resolved for one step.

    Until the first optimizer step the weights are those that generated the rollout, so the
    training forward's log-probs are the old ones, for every micro-batch of that step: with
    one optimizer step per rollout (``updates_per_step``: epochs x optimizer batches) the
    separate pass changes nothing. It is needed when the policy takes several steps on the
    rollout, when it does not train this step (critic warm-up), or when the algorithm's
    advantages read the old log-probs before training."""
    if mode == "engine":
        return "engine"
    if mode == "recompute" or updates_per_step > 1 or not updates_policy or advantages_use_them:
        return "pass"
    return "train"
