"""Safe RLHF: the Lagrange multiplier's update by hand, the penalised rewards, and the RL loop
keeping the mean cost under ``reward.cost_limit`` where the unconstrained run exceeds it;
λ is logged and checkpointed (a resumed run continues bit for bit)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from lightrft_core import hookimpl
from lightrft_core.config import load_config
from lightrft_core.interfaces import RewardInput, RewardModel, RewardOutput
from lightrft_core.plugins import PluginManager
from lightrft_core.rewards.safe_rlhf import CostMultiplier
from lightrft_core.testing.training import write_letter_prompts
from lightrft_core.trainer.checkpoints import checkpoint_dir
from lightrft_core.trainer.rl import RLTrainer


def test_the_linear_update_by_hand() -> None:
    m = CostMultiplier(limit=0.2, value=1.0, lr=0.5)
    m.update(0.6)  # 1 + 0.5·(0.6 − 0.2)
    assert m.value == pytest.approx(1.2)
    m.update(0.0)  # 1.2 + 0.5·(0 − 0.2)
    assert m.value == pytest.approx(1.1)
    low = CostMultiplier(limit=0.2, value=0.05, lr=0.5)
    low.update(0.0)  # 0.05 − 0.1 < 0: projected to 0
    assert low.value == 0.0


def test_the_log_space_update_by_hand() -> None:
    m = CostMultiplier(limit=0.2, value=1.0, lr=0.5, rule="log")
    m.update(0.6)  # ln λ = 0 + 0.5·1·0.4 = 0.2
    assert m.value == pytest.approx(math.exp(0.2))
    m.update(0.0)  # ln λ = 0.2 + 0.5·1.2214028·(−0.2) = 0.0778597
    assert m.value == pytest.approx(1.0809710, rel=1e-6)


def test_rewards_are_penalised_by_lambda_times_the_cost() -> None:
    m = CostMultiplier(limit=0.0, value=1.5)
    out = RewardOutput(
        rewards=torch.tensor([1.0, 0.5]), sub_scores={"cost": torch.tensor([0.2, 1.0])}
    )
    penalised = m.penalised(out)
    assert penalised.rewards.tolist() == pytest.approx([0.7, -1.0])  # 1 − 0.3, 0.5 − 1.5
    assert penalised.sub_scores["reward_unpenalised"].tolist() == [1.0, 0.5]
    assert penalised.sub_scores["cost"].tolist() == pytest.approx([0.2, 1.0])
    with pytest.raises(ValueError, match="no 'harm' sub-score.*cost"):
        CostMultiplier(limit=0.0, cost_key="harm").penalised(out)
    state = m.state_dict()
    with pytest.raises(ValueError, match="cost_multiplier_update"):
        CostMultiplier(limit=0.0, rule="log").load_state_dict(state)


class LettersWithCost(RewardModel):
    """Reward: the share of ``a`` in the response plus half the share of ``b``; cost: the
    share of ``a``. The unconstrained policy writes ``a``; under the constraint ``b`` pays."""

    name = "letters_with_cost"

    @dataclass
    class Config:
        pass

    def score(self, batch: RewardInput) -> RewardOutput:
        def share(text: str, letters: str) -> float:
            return sum(text.count(c) for c in letters) / max(1, len(text))

        rewards = torch.tensor([share(r, "a") + 0.5 * share(r, "b") for r in batch.responses])
        cost = torch.tensor([share(r, "a") for r in batch.responses])
        return RewardOutput(rewards=rewards, sub_scores={"cost": cost})


class _Plugin:
    @hookimpl
    def lightrft_register_reward_models(self, register):  # type: ignore[no-untyped-def]
        register(LettersWithCost)


def _run(model_dir, tmp_path, out: str, *extra: str) -> list[dict[str, float]]:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(_Plugin(), name="letters")
    prompts = write_letter_prompts(tmp_path / "prompts.jsonl")
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / out}",
            "run.seed=3",
            f"data.train_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=4",
            "reward.name=letters_with_cost",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=16",
            "trainer.learning_rate=1e-2",
            "logging.tensorboard=false",
            *extra,
        ],
        manager=pm,
    )
    return RLTrainer(cfg, pm).train().history


STEPS = 12
LIMIT = 0.1
SAFE = ("reward.cost_limit=0.1", "reward.cost_multiplier_lr=2")


@pytest.mark.slow
def test_the_constraint_keeps_the_mean_cost_under_the_limit(fast_tiny_model_dir, tmp_path) -> None:
    free = _run(fast_tiny_model_dir, tmp_path, "free", f"trainer.max_steps={STEPS}")
    safe = _run(
        fast_tiny_model_dir,
        tmp_path,
        "safe",
        f"trainer.max_steps={STEPS}",
        "trainer.save_every=8",
        *SAFE,
    )
    late = slice(STEPS // 2, None)
    free_cost = [r["reward/cost"] for r in free][late]
    safe_cost = [r["reward/cost"] for r in safe][late]
    assert sum(free_cost) / len(free_cost) > LIMIT, free_cost
    assert sum(safe_cost) / len(safe_cost) < LIMIT, safe_cost
    # λ logged every step: the value the step used, raised by costs over the limit
    lambdas = [r["safe_rlhf/lambda"] for r in safe]
    costs = [r["reward/cost"] for r in safe]
    assert lambdas[0] == 1.0  # reward.cost_multiplier_init
    for before, after, cost in zip(lambdas, lambdas[1:], costs, strict=False):
        assert after == pytest.approx(max(0.0, before + 2 * (cost - LIMIT)))

    # resumed from step 8: λ and the rest continue bit for bit
    resumed = _run(
        fast_tiny_model_dir,
        tmp_path,
        "safe",
        f"trainer.max_steps={STEPS}",
        f"trainer.resume_from={checkpoint_dir(tmp_path / 'safe', 8)}",
        *SAFE,
    )
    assert [r["step"] for r in resumed[8:]] == list(range(9, STEPS + 1))  # after the log's 8
    for key in ("safe_rlhf/lambda", "reward/cost", "reward/mean"):
        assert [r[key] for r in resumed[8:]] == [r[key] for r in safe[8:]], key
