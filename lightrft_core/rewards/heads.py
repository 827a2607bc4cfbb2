"""Named heads of a scalar reward model (``rm.heads``): one backbone, one output per head
(``num_labels`` = number of heads, ``config.id2label`` their names), e.g. ``helpful`` and a
``cost`` head as in Safe RLHF (arXiv 2310.12773).

Each preference row holds two responses (``data.chosen_key``, ``data.rejected_key``) and,
per head, which of them the head ranks higher (``preferred_key``: 0 the first, 1 the second;
no key: the first). A head with ``lower_is_better`` is a cost: its preferred response must
score *lower*. ``safe_keys`` name two per-response booleans (is the response safe?) that add
Safe RLHF's classification term, which pushes a cost below 0 for a safe response and above
0 for an unsafe one (signs flipped for a higher-is-better head).

Per pair and head, with ``d = +1`` (higher is better) or ``−1`` (lower is better), ``s_p`` /
``s_o`` the scores of the preferred / other response and ``y_i = +1`` (safe) / ``−1``::

    loss = −log σ(d·(s_p − s_o)) − Σ_i log σ(d·y_i·s_i)      # the sum only with safe_keys

One head without keys is the plain Bradley–Terry loss ``−log σ(s_chosen − s_rejected)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: The keys of one ``rm.heads`` entry.
HEAD_KEYS = ("name", "preferred_key", "lower_is_better", "safe_keys")

#: The head of a reward model trained without ``rm.heads`` (one output).
DEFAULT_HEAD = "score"


@dataclass(frozen=True)
class RewardHead:
    """One output of a reward model and the row columns it is trained from."""

    name: str
    preferred_key: str | None = None
    lower_is_better: bool = False
    safe_keys: tuple[str, str] | None = None

    @property
    def direction(self) -> float:
        return -1.0 if self.lower_is_better else 1.0

    def row_keys(self) -> tuple[str, ...]:
        """The row columns this head reads."""
        keys = () if self.preferred_key is None else (self.preferred_key,)
        return keys + (self.safe_keys or ())


def heads_problem(entries: Sequence[Any]) -> str | None:
    """What is wrong with ``rm.heads`` entries, or ``None``."""
    names: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            return f"rm.heads[{index}] must be a mapping with a 'name', got {entry!r}"
        unknown = sorted(set(entry) - set(HEAD_KEYS))
        if unknown:
            return f"rm.heads[{index}]: unknown key(s) {unknown} (valid: {', '.join(HEAD_KEYS)})"
        safe = entry.get("safe_keys")
        if safe is not None and (
            not isinstance(safe, Sequence) or isinstance(safe, str) or len(safe) != 2
        ):
            return f"rm.heads[{index}].safe_keys must list two columns, got {safe!r}"
        names.append(entry["name"])
    if len(set(names)) != len(names):
        return f"rm.heads names a head twice: {names}"
    return None


def parse_heads(entries: Sequence[Mapping[str, Any]]) -> list[RewardHead]:
    """``rm.heads`` as ``RewardHead`` values; no entry: the one ``score`` head."""
    problem = heads_problem(entries)
    if problem:
        raise ValueError(problem)
    if not entries:
        return [RewardHead(DEFAULT_HEAD)]
    return [
        RewardHead(
            name=str(entry["name"]),
            preferred_key=entry.get("preferred_key"),
            lower_is_better=bool(entry.get("lower_is_better", False)),
            safe_keys=None if entry.get("safe_keys") is None else tuple(entry["safe_keys"]),
        )
        for entry in entries
    ]


def head_names_of(model_config: Any) -> list[str]:
    """The head names a saved reward model declares (``config.id2label`` in output order);
    one output without names is the ``score`` head."""
    count = int(model_config.num_labels)
    labels = {int(k): str(v) for k, v in (model_config.id2label or {}).items()}
    names = [labels.get(i, f"LABEL_{i}") for i in range(count)]
    if count == 1 and names == ["LABEL_0"]:
        return [DEFAULT_HEAD]
    return names


@dataclass
class HeadTargets:
    """The labels of ``n`` pairs for ``H`` heads: ``preferred`` ``[n, H]`` (0 or 1: which
    side the head ranks higher) and ``safety`` ``[n, 2, H]`` (+1 safe, −1 unsafe, 0 no
    label) of each side."""

    preferred: torch.Tensor
    safety: torch.Tensor


def head_targets(labels: Sequence[Mapping[str, Any]], heads: Sequence[RewardHead]) -> HeadTargets:
    """The targets of pairs whose row values for the heads' keys are ``labels``."""
    n, h = len(labels), len(heads)
    preferred = torch.zeros(n, h, dtype=torch.long)
    safety = torch.zeros(n, 2, h)
    for i, row in enumerate(labels):
        for j, head in enumerate(heads):
            if head.preferred_key is not None:
                preferred[i, j] = int(row[head.preferred_key])
            if head.safe_keys is not None:
                for side, key in enumerate(head.safe_keys):
                    safety[i, side, j] = 1.0 if row[key] else -1.0
    return HeadTargets(preferred, safety)


def pair_losses(
    first: torch.Tensor, second: torch.Tensor, targets: HeadTargets, heads: Sequence[RewardHead]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, margin)``, both ``[n, H]``, of pairs scored ``first`` / ``second`` (``[n, H]``):
    the module docstring's loss, and ``d·(s_p − s_o)`` (> 0: the head ranks the pair right)."""
    direction = torch.tensor([head.direction for head in heads], device=first.device)
    preferred = targets.preferred.to(first.device).bool()
    s_preferred = torch.where(preferred, second, first)
    s_other = torch.where(preferred, first, second)
    margin = direction * (s_preferred - s_other)
    loss = -F.logsigmoid(margin)
    safety = targets.safety.to(first.device)
    for side, scores in enumerate((first, second)):
        labelled = safety[:, side] != 0
        term = -F.logsigmoid(direction * safety[:, side] * scores)
        loss = loss + torch.where(labelled, term, torch.zeros_like(term))
    return loss, margin
