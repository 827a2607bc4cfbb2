"""Dynamic sampling in the RL loop: the contract of ``lightrft_core/interfaces/algorithm.py``
("Dynamic sampling") as ``trainer/dynamic_sampling.py`` and ``RLTrainer`` implement it.

Unit tests drive ``collect_groups`` with scripted rounds (and two thread-ranks); the loop
tests run DAPO on a tiny model with a reward that makes chosen groups all-equal."""

from __future__ import annotations

import json
import threading
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from lightrft_core import hookimpl
from lightrft_core.config import load_config
from lightrft_core.interfaces import (
    AdvantageOutput,
    Algorithm,
    GenerationOutput,
    PolicyLossOutput,
    RewardModel,
    RewardOutput,
)
from lightrft_core.plugins import PluginManager
from lightrft_core.testing import FakeStrategy
from lightrft_core.trainer.dynamic_sampling import ScoredRound, collect_groups
from lightrft_core.trainer.rl import RLTrainer

N = 2  # samples per prompt


# ---------------------------------------------------------------------- unit: collect_groups
class _DropEqual(Algorithm):
    """Drops all-equal groups, allows ``rounds`` extra rounds."""

    name = "drop_equal"

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds

    @property
    def max_resample_rounds(self) -> int:
        return self.rounds

    def filter_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        groups = rewards.view(-1, group_size)
        return ~(groups == groups[:, :1]).all(dim=1)

    def compute_advantages(self, batch):  # type: ignore[no-untyped-def]
        return AdvantageOutput(advantages=torch.zeros(batch.action_mask.shape))

    def policy_loss(self, batch):  # type: ignore[no-untyped-def]
        return PolicyLossOutput(loss=batch.log_probs.sum())


@dataclass
class _Item:
    prompt_ids: list[int]


def _scripted(groups_per_round: list[list[bool]]) -> tuple[Any, list[int]]:
    """``run_round`` returning, for round ``k``, the groups ``groups_per_round[k]`` (True: a
    group with signal) -- as many as asked for -- and the list of prompt counts asked."""
    asked: list[int] = []

    def run_round(prompts: int, round_index: int) -> ScoredRound:
        asked.append(prompts)
        flags = groups_per_round[round_index][:prompts]
        assert len(flags) == prompts
        items = [_Item([100 * round_index + g]) for g in range(prompts)]
        outputs = [GenerationOutput(g, [g, s]) for g in range(prompts) for s in range(N)]
        rewards = torch.tensor([[0.0, 1.0] if f else [0.5, 0.5] for f in flags]).flatten()
        return ScoredRound(items, outputs, rewards, {}, 0)

    return run_round, asked


def test_missing_groups_are_resampled_then_filled_in_drop_order() -> None:
    # quota 4. Round 0: keep g1, g3 (drop g0, g2) -> 2 missing. Round 1 (2 prompts): drops
    # both -> still 2 missing. Round 2 (2 prompts): keeps 1. Rounds exhausted (2 extra):
    # fill with the first dropped group, r0/g0.
    run_round, asked = _scripted(
        [[False, True, False, True], [False, False], [True, False]],
    )
    out = collect_groups(_DropEqual(rounds=2), FakeStrategy(), 4, run_round)
    assert asked == [4, 2, 2]
    assert out.chosen == [(0, 1), (0, 3), (2, 0), (0, 0)]
    assert out.metrics == {
        "dynamic_sampling/rounds": 3.0,
        "dynamic_sampling/extra_rounds": 2.0,
        "dynamic_sampling/extra_prompts": 4.0,
        "dynamic_sampling/filtered_groups": 5.0,
        "dynamic_sampling/filled_groups": 1.0,
        "dynamic_sampling/kept_groups": 3.0,
    }
    prompt_ids, outputs, rewards = out.trained_batch()
    assert prompt_ids == [[1], [3], [200], [0]]
    assert [o.prompt_index for o in outputs] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert rewards.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.5]
    assert len(out.generated()["reward"]) == (4 + 2 + 2) * N  # every sample generated


def test_surplus_kept_groups_are_left_out_and_full_rounds_stop_early() -> None:
    run_round, asked = _scripted([[True, False, True], [True, True]])
    out = collect_groups(_DropEqual(rounds=5), FakeStrategy(), 3, run_round)
    assert asked == [3, 1]  # one missing; then full: no third round
    assert out.chosen == [(0, 0), (0, 2), (1, 0)]
    assert out.metrics["dynamic_sampling/extra_rounds"] == 1.0


def test_without_extra_rounds_dropped_groups_fill_the_batch() -> None:
    run_round, asked = _scripted([[False, True, False]])
    out = collect_groups(_DropEqual(rounds=0), FakeStrategy(), 3, run_round)
    assert asked == [3]
    assert out.chosen == [(0, 1), (0, 0), (0, 2)]
    assert out.metrics["dynamic_sampling/filled_groups"] == 2.0


class _ThreadRank(FakeStrategy):
    """One of ``world`` thread-ranks whose ``all_reduce`` really reduces over the others."""

    def __init__(self, rank: int, world: int, shared: dict[str, Any]) -> None:
        super().__init__()
        self._rank, self._world, self.shared = rank, world, shared

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    def all_reduce(self, value, op="mean"):  # type: ignore[no-untyped-def]
        barrier, slots = self.shared["barrier"], self.shared["slots"]
        slots[self._rank] = torch.as_tensor(value).clone()
        barrier.wait()
        stacked = torch.stack(slots)
        reduced = {"sum": stacked.sum(0), "max": stacked.max(0).values}[op]
        barrier.wait()
        return reduced


def test_two_ranks_take_the_same_decisions() -> None:
    # quota 2 per rank. Rank 0 keeps 2 at once; rank 1 keeps none, then 1, then 1: both
    # ranks run 3 rounds of the same sizes (the largest shortfall), rank 0 trains its first
    # groups, rank 1 its kept ones; the counts are global.
    shared = {"barrier": threading.Barrier(2), "slots": [None, None]}
    scripts = [
        [[True, True], [False, False], [True, True]],
        [[False, False], [True, False], [True, False]],
    ]
    results: list[Any] = [None, None]

    def rank(r: int) -> None:
        run_round, asked = _scripted(scripts[r])
        out = collect_groups(_DropEqual(rounds=3), _ThreadRank(r, 2, shared), 2, run_round)
        results[r] = (asked, out)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    (asked0, out0), (asked1, out1) = results
    assert asked0 == asked1 == [2, 2, 1]
    assert out0.chosen == [(0, 0), (0, 1)]
    assert out1.chosen == [(1, 0), (2, 0)]
    assert out0.metrics == out1.metrics
    assert out0.metrics["dynamic_sampling/extra_prompts"] == 2 * (2 + 1)
    assert out0.metrics["dynamic_sampling/filtered_groups"] == 2 + 3


# ---------------------------------------------------------------------- the loop
class FlatOrVaried(RewardModel):
    """0.5 for every sample of a prompt labelled ``flat`` (an all-equal group); a
    hash of the response in [0, 1) otherwise (distinct responses, distinct rewards).
    Records the rewards of every call (one call per rollout round)."""

    name = "flat_or_varied"
    calls: ClassVar[list[torch.Tensor]] = []

    def score(self, batch):  # type: ignore[no-untyped-def]
        values = [
            0.5 if label == "flat" else (zlib.crc32(response.encode()) % 1000) / 1000
            for label, response in zip(batch.labels, batch.responses, strict=True)
        ]
        rewards = torch.tensor(values, dtype=torch.float32)
        type(self).calls.append(rewards)
        return RewardOutput(rewards=rewards)


class _Plugin:
    @hookimpl
    def lightrft_register_reward_models(self, register):  # type: ignore[no-untyped-def]
        register(FlatOrVaried)


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(_Plugin(), name="flat")
    return pm


def _prompts(tmp_path, flat_every: int) -> Any:  # type: ignore[no-untyped-def]
    """24 prompts; every ``flat_every``-th is labelled ``flat`` (1: all of them)."""
    rows = [
        {"prompt": f"say {i}:", "answer": "flat" if i % flat_every == 0 else "vary"}
        for i in range(24)
    ]
    path = tmp_path / f"prompts_{flat_every}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(manager, tiny_model_dir, prompts, out, *extra):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.seed=5",
            f"data.train_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={tiny_model_dir}",
            f"engine.n_samples_per_prompt={N}",
            "engine.max_new_tokens=4",
            "reward.name=flat_or_varied",
            "algorithm.name=dapo",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=1e-3",
            "logging.tensorboard=false",
            *extra,
        ],
        manager=manager,
    )


def _train(cfg, manager) -> tuple[list[dict[str, Any]], list[list[torch.Tensor]]]:  # type: ignore[no-untyped-def]
    """Train; returns the history and the reward calls (rounds) of each step."""
    FlatOrVaried.calls.clear()
    per_step: list[list[torch.Tensor]] = []

    def progress(step: int, total: int) -> None:
        per_step.append(list(FlatOrVaried.calls))
        FlatOrVaried.calls.clear()

    trainer = RLTrainer(cfg, manager, progress=progress)
    return trainer.train().history, per_step


def _equal_groups(rewards: torch.Tensor) -> int:
    groups = rewards.view(-1, N)
    return int((groups == groups[:, :1]).all(dim=1).sum())


def test_dapo_drops_all_equal_groups_and_refills_the_batch(
    manager, tiny_model_dir, tmp_path
) -> None:
    prompts = _prompts(tmp_path, flat_every=2)  # half the groups are all-equal
    cfg = _config(manager, tiny_model_dir, prompts, tmp_path / "a", "trainer.max_steps=2")
    history, rounds = _train(cfg, manager)
    assert len(history) == len(rounds) == 2
    for record, calls in zip(history, rounds, strict=True):
        quota = 4
        kept = 0
        for index, rewards in enumerate(calls):
            if index > 0:  # an extra round asks for exactly the missing groups
                assert len(rewards) == (quota - kept) * N
            kept += len(rewards) // N - _equal_groups(rewards)
        assert record["samples"] == quota * N  # every trained batch is full
        assert record["dynamic_sampling/rounds"] == len(calls) <= 1 + 3
        assert kept >= quota or len(calls) == 1 + 3  # stops when full or out of rounds
        assert record["dynamic_sampling/extra_rounds"] == len(calls) - 1
        assert record["dynamic_sampling/filtered_groups"] == sum(map(_equal_groups, calls))
        assert record["dynamic_sampling/extra_prompts"] == sum(len(r) // N for r in calls[1:])
        filled = max(0, quota - kept)
        assert record["dynamic_sampling/filled_groups"] == filled
        assert record["dynamic_sampling/kept_groups"] == quota - filled
        # the trained batch holds exactly the filled all-equal groups
        assert record["advantage/zero_std_group_fraction"] == pytest.approx(filled / quota)
    assert sum(r["dynamic_sampling/extra_prompts"] for r in history) > 0
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    for key in ("filtered_groups", "extra_prompts", "rounds", "filled_groups"):
        assert all(f"dynamic_sampling/{key}" in r for r in logged), key

    # resuming after step 1 draws the same prompts and samples at step 2
    _train(
        _config(manager, tiny_model_dir, prompts, tmp_path / "b", "trainer.max_steps=1"), manager
    )
    resumed, _ = _train(
        _config(
            manager,
            tiny_model_dir,
            prompts,
            tmp_path / "b",
            "trainer.max_steps=2",
            "trainer.resume_from=latest",
        ),
        manager,
    )
    for key in ("reward/mean", "loss", "dynamic_sampling/extra_prompts", "response_length"):
        assert resumed[-1][key] == history[-1][key], key


def test_extra_rounds_are_bounded_and_the_batch_is_filled(
    manager, tiny_model_dir, tmp_path
) -> None:
    prompts = _prompts(tmp_path, flat_every=1)  # every group is all-equal
    cfg = _config(
        manager,
        tiny_model_dir,
        prompts,
        tmp_path / "run",
        "trainer.max_steps=1",
        "algorithm.max_resample_rounds=2",
    )
    (record,), (calls,) = _train(cfg, manager)
    assert [len(r) // N for r in calls] == [4, 4, 4]
    assert record["dynamic_sampling/rounds"] == 3
    assert record["dynamic_sampling/extra_prompts"] == 8
    assert record["dynamic_sampling/filtered_groups"] == 12
    assert record["dynamic_sampling/filled_groups"] == 4
    assert record["samples"] == 4 * N
    assert record["reward/mean"] == 0.5  # over every generated sample


def test_algorithms_that_keep_every_group_run_one_round_and_log_nothing_extra(
    manager, tiny_model_dir, tmp_path
) -> None:
    prompts = _prompts(tmp_path, flat_every=1)
    cfg = _config(
        manager, tiny_model_dir, prompts, tmp_path / "run", "trainer.max_steps=1",
        "algorithm.name=grpo",
    )  # fmt: skip
    (record,), (calls,) = _train(cfg, manager)
    assert len(calls) == 1
    assert not any(key.startswith("dynamic_sampling/") for key in record)
