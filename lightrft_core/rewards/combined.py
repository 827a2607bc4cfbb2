"""``CombinedReward``: a weighted sum of several registered rewards, each part logged."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.errors import did_you_mean
from ..config.types import TypeMismatch, coerce, field_types
from ..interfaces import RewardInput, RewardModel, RewardOutput, StrategyBase

#: Keys of a ``rewards`` entry that are not options of the named reward.
ENTRY_KEYS = ("name", "weight")

Resolver = Callable[[str], type[RewardModel]] | Mapping[str, type[RewardModel]]


def _default_entries() -> list[dict[str, Any]]:
    return [{"name": "math", "weight": 1.0}]


def _registry_lookup(name: str) -> type[RewardModel]:
    from ..plugins import get_plugin_manager

    return get_plugin_manager().get_reward_model(name)


class CombinedReward(RewardModel):
    """``reward = sum_i weight_i * reward_i``.

    Sub-scores: each part's (unweighted) reward under its name -- ``name_<index>`` when a
    name repeats -- and ``accuracy`` from the first part that reports one. Texts: every
    part's, as ``<part name>/<text name>`` (e.g. ``judge/verdict``).
    """

    name = "combined"

    @dataclass
    class Config:
        rewards: list[dict[str, Any]] = field(
            default_factory=_default_entries,
            metadata={
                "help": "The parts: [{name: math, weight: 1.0}, {name: format, weight: 0.2, "
                "pattern: ...}]; keys other than name and weight are the part's options."
            },
        )

        def __post_init__(self) -> None:
            if not self.rewards:
                raise ValueError("rewards must list at least one {name: ..., weight: ...} entry")
            for index, entry in enumerate(self.rewards):
                if not isinstance(entry, Mapping):
                    raise ValueError(f"rewards[{index}] must be a mapping, got {entry!r}")
                if not isinstance(entry.get("name"), str):
                    raise ValueError(f"rewards[{index}] needs a 'name' (a reward name)")
                weight = entry.get("weight", 1.0)
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise ValueError(f"rewards[{index}].weight must be a number, got {weight!r}")
                if not math.isfinite(weight):
                    raise ValueError(f"rewards[{index}].weight must be finite, got {weight}")

    def __init__(self, config: Any = None, *, resolve: Resolver | None = None) -> None:
        super().__init__(config)
        self.parts: list[tuple[str, float, RewardModel]] = []
        names = [str(entry["name"]) for entry in self.config.rewards]
        for index, entry in enumerate(self.config.rewards):
            part = build_part(index, entry, resolve)
            key = entry["name"] if names.count(entry["name"]) == 1 else f"{entry['name']}_{index}"
            self.parts.append((key, float(entry.get("weight", 1.0)), part))

    # a property in place of the base's class flag: a part that compares with the label needs one
    @property
    def requires_label(self) -> bool:  # type: ignore[override]
        return any(part.requires_label for _, _, part in self.parts)

    # a property in place of the base's class flag: every part must see the images it scores
    @property
    def accepts_image_prompts(self) -> bool:  # type: ignore[override]
        return all(part.accepts_image_prompts for _, _, part in self.parts)

    def place(self, strategy: StrategyBase) -> None:  # each part places its own model
        for _, _, part in self.parts:
            part.place(strategy)

    def score(self, batch: RewardInput) -> RewardOutput:
        total = torch.zeros(len(batch), dtype=torch.float32)
        sub_scores: dict[str, torch.Tensor] = {}
        texts: dict[str, list[str]] = {}
        for key, weight, part in self.parts:
            out = part.score(batch)
            rewards = out.rewards.detach().float().reshape(-1)
            if rewards.shape != total.shape:
                raise ValueError(
                    f"reward {key!r} returned {rewards.numel()} rewards for {len(batch)}"
                )
            total += weight * rewards
            sub_scores[key] = rewards.clone()
            if "accuracy" in out.sub_scores and "accuracy" not in sub_scores:
                sub_scores["accuracy"] = out.sub_scores["accuracy"].detach().float()
            texts.update({f"{key}/{name}": list(values) for name, values in out.texts.items()})
        return RewardOutput(rewards=total, sub_scores=sub_scores, texts=texts)


def build_part(index: int, entry: Mapping[str, Any], resolve: Resolver | None) -> RewardModel:
    """The reward of ``rewards[index]``, its options checked against that reward's ``Config``."""
    name = str(entry["name"])
    where = f"rewards[{index}] ({name})"
    if isinstance(resolve, Mapping):
        if name not in resolve:
            hint = did_you_mean(name, resolve)
            raise ValueError(f"rewards[{index}]: no reward named {name!r}{hint}")
        cls = resolve[name]
    else:
        try:
            cls = (resolve or _registry_lookup)(name)
        except LookupError as exc:
            raise ValueError(f"rewards[{index}]: {exc}") from None
    valid = {f.name for f in dataclasses.fields(cls.Config)}
    types = field_types(cls.Config)
    options: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ENTRY_KEYS:
            continue
        if key not in valid:
            hint = did_you_mean(str(key), valid)
            listed = "" if hint else f" (valid: {', '.join(sorted(valid)) or 'none'})"
            raise ValueError(f"{where}: unknown option {key!r}{hint}{listed}")
        try:
            options[key] = coerce(value, types[key])
        except TypeMismatch as exc:
            raise ValueError(f"{where}: option {key!r}: {exc}") from None
    try:
        config = cls.Config(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return cls(config)
