"""Properties every algorithm of the plugin must have: exact gradients under gradient
accumulation and data parallelism, zero (never NaN) advantages for equal rewards, group
size checked at configuration time, selectable by name with its own options."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import lightrft_plugin_grpo.plugin
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import (
    AdvantageInput,
    Algorithm,
    AlgorithmContext,
    LossScale,
    PolicyLossInput,
)
from lightrft_core.plugins import PluginManager
from lightrft_plugin_grpo.dapo import DAPO
from lightrft_plugin_grpo.dr_grpo import DrGRPO
from lightrft_plugin_grpo.gmpo import GMPO
from lightrft_plugin_grpo.grpo import GRPO
from lightrft_plugin_grpo.gspo import GSPO, GSPOToken

ALGORITHMS: dict[str, type[GRPO]] = {
    cls.name: cls for cls in (GRPO, DrGRPO, DAPO, GSPO, GSPOToken, GMPO)
}

# GSPO's default range (3e-4) clips every sequence of random data, leaving no gradient to
# compare; 0.2 clips some and not others.
WIDE = {"clip_eps_low": 0.2, "clip_eps_high": 0.2}
ENTROPY_OPTIONS = {"high_entropy_token_fraction": 0.4, "entropy_coef": 0.01}
INVARIANCE_CASES = [
    ("dr_grpo", {}),
    ("dr_grpo", ENTROPY_OPTIONS),
    ("dapo", {}),
    ("dapo", {**ENTROPY_OPTIONS, "kl_coef": 0.1}),
    ("gspo", WIDE),
    ("gspo", {**WIDE, **ENTROPY_OPTIONS, "loss_aggregation": "token-mean"}),
    ("gspo", {**WIDE, "dual_clip": 1.5, "kl_coef": 0.1}),
    ("gspo_token", WIDE),
    ("gspo_token", {**WIDE, **ENTROPY_OPTIONS, "loss_aggregation": "seq-mean-token-sum"}),
    ("gmpo", {}),
    ("gmpo", {"clip_eps_low": 0.1, "clip_eps_high": 0.1, **ENTROPY_OPTIONS}),
    ("gmpo", {"loss_aggregation": "seq-mean-token-sum-norm", "kl_coef": 0.1}),
    ("grpo", ENTROPY_OPTIONS),
]


def _ids(case: tuple[str, dict[str, Any]]) -> str:
    return case[0] + "".join(f"-{k}={v}" for k, v in case[1].items())


def _rollout(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, t = 8, 7
    lengths = torch.tensor([7, 2, 5, 1, 6, 3, 4, 7])
    return {
        "old": -torch.rand(b, t, generator=gen) * 3,
        "delta": torch.randn(b, t, generator=gen) * 0.3,  # log-ratios: some clip, some not
        "ref_shift": torch.randn(b, t, generator=gen) * 0.2,
        "features": torch.randn(b, t, generator=gen),
        "entropy": torch.rand(b, t, generator=gen) * 2,
        "advantages": torch.randn(b, 1, generator=gen).expand(b, t).contiguous(),
        "mask": torch.arange(t)[None, :] < lengths[:, None],
    }


def _loss(
    algo: Algorithm,
    data: dict[str, torch.Tensor],
    lp: torch.Tensor,
    entropy: torch.Tensor,
    rows: slice,
    scale: LossScale,
) -> torch.Tensor:
    mask = data["mask"][rows]
    algo.setup(AlgorithmContext(max_new_tokens=7))
    return algo.policy_loss(
        PolicyLossInput(
            log_probs=lp[rows],
            old_log_probs=data["old"][rows],
            advantages=torch.where(mask, data["advantages"][rows], 0.0),
            action_mask=mask,
            scale=scale,
            ref_log_probs=(data["old"] + data["ref_shift"])[rows],
            entropy=entropy[rows],
        )
    ).loss


@pytest.mark.parametrize("case", INVARIANCE_CASES, ids=_ids)
def test_gradient_is_the_same_for_1_and_4_micro_batches(case: tuple[str, dict[str, Any]]) -> None:
    name, options = case
    algo = ALGORITHMS[name](ALGORITHMS[name].Config(**options))
    data = _rollout(0)
    scale = LossScale(num_tokens=int(data["mask"].sum()), num_sequences=8)

    def grads(row_slices: list[slice]) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        lp = (data["old"] + data["delta"]).requires_grad_(True)  # leaf [B, T]
        entropy = data["entropy"].clone().requires_grad_(True)  # leaf [B, T]
        total = 0.0
        for rows in row_slices:
            loss = _loss(algo, data, lp, entropy, rows, scale)
            loss.backward()  # gradients accumulate
            total += loss.item()
        assert lp.grad is not None
        return lp.grad, entropy.grad, total

    lp_full, h_full, loss_full = grads([slice(0, 8)])
    lp_acc, h_acc, loss_acc = grads([slice(i, i + 2) for i in range(0, 8, 2)])
    assert lp_full.abs().sum() > 0
    torch.testing.assert_close(lp_acc, lp_full, atol=1e-6, rtol=0)
    if "entropy_coef" in options:  # the entropy bonus has its own gradient
        assert h_full is not None and h_acc is not None and h_full.abs().sum() > 0
        torch.testing.assert_close(h_acc, h_full, atol=1e-6, rtol=0)
    else:
        assert h_full is None
    assert loss_acc == pytest.approx(loss_full, abs=1e-5)
    # Masked tokens get zero gradient.
    assert torch.equal(lp_full[~data["mask"]], torch.zeros(int((~data["mask"]).sum())))


@pytest.mark.parametrize("case", INVARIANCE_CASES, ids=_ids)
def test_gradient_is_the_same_on_2_simulated_ranks(case: tuple[str, dict[str, Any]]) -> None:
    # A shared parameter θ [T]: log_probs = old + delta + θ·features and entropy = base +
    # θ·features. Each "rank" has its own replica of θ and computes its half (2 micro-batches
    # of 2 rows) with world_size = 2; the strategy averages the replicas' gradients.
    name, options = case
    algo = ALGORITHMS[name](ALGORITHMS[name].Config(**options))
    data = _rollout(1)
    tokens = int(data["mask"].sum())

    def theta_grad(row_slices: list[slice], scale: LossScale) -> torch.Tensor:
        theta = torch.zeros(7, requires_grad=True)
        lp = data["old"] + data["delta"] + theta * data["features"]
        entropy = data["entropy"] + theta * data["features"]
        for rows in row_slices:
            _loss(algo, data, lp, entropy, rows, scale).backward(retain_graph=True)
        assert theta.grad is not None
        return theta.grad

    full = theta_grad([slice(0, 8)], LossScale(tokens, 8, world_size=1))
    dp = LossScale(tokens, 8, world_size=2)
    rank0 = theta_grad([slice(0, 2), slice(2, 4)], dp)
    rank1 = theta_grad([slice(4, 6), slice(6, 8)], dp)
    assert full.abs().sum() > 0
    torch.testing.assert_close((rank0 + rank1) / 2, full, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- advantages
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("reward", [0.0, 1.0, 0.1, 0.7])
def test_equal_rewards_give_zero_advantage_never_nan(name: str, reward: float) -> None:
    # Two groups of 4 equal rewards, responses of different lengths (1 to 4 tokens of 6).
    # DAPO's shaping: L_max = 6, L_buf = 2, no response longer than 4 -> no penalty.
    lengths = torch.tensor([4, 1, 3, 2, 4, 4, 1, 2])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    algo = ALGORITHMS[name]()
    algo.setup(AlgorithmContext(max_new_tokens=6))
    out = algo.compute_advantages(AdvantageInput(torch.full((8,), reward), mask, group_size=4))
    assert not torch.isnan(out.advantages).any()
    assert torch.equal(out.advantages, torch.zeros(8, 6))
    assert out.metrics["zero_std_group_fraction"] == 1.0


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_group_size_one_is_refused_by_the_estimator(name: str) -> None:
    algo = ALGORITHMS[name]()
    algo.setup(AlgorithmContext(max_new_tokens=4))
    with pytest.raises(ValueError, match="group_size >= 2"):
        algo.compute_advantages(
            AdvantageInput(torch.tensor([1.0, 0.0]), torch.ones(2, 1, dtype=torch.bool), 1)
        )


# ---------------------------------------------------------------------- configuration
FAKES = ["model.name=fake", "strategy.name=fake", "engine.name=fake", "reward.name=constant"]


@pytest.fixture
def manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    return pm


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_a_single_sample_per_prompt_is_refused_at_validation(name: str, manager) -> None:
    assert ALGORITHMS[name].requires_groups
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [*FAKES, f"algorithm.name={name}", "engine.n_samples_per_prompt=1"],
            manager=manager,
        )
    assert f"algorithm '{name}'" in str(info.value)
    assert "needs n_samples_per_prompt >= 2, got 1" in str(info.value)


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("dr_grpo", ["algorithm.max_tokens_norm=512"], {"max_tokens_norm": 512}),
        (
            "dapo",
            ["algorithm.overlong_buffer=64", "algorithm.dynamic_sampling=false"],
            {
                "overlong_buffer": 64,
                "dynamic_sampling": False,
                "clip_eps_high": 0.28,
            },
        ),
        ("gspo", ["algorithm.clip_eps_high=0.001"], {"clip_eps_high": 0.001}),
        (
            "gspo_token",
            ["algorithm.high_entropy_token_fraction=0.2"],
            {"high_entropy_token_fraction": 0.2},
        ),
        ("gmpo", ["algorithm.entropy_coef=0.001"], {"entropy_coef": 0.001, "clip_eps_low": 0.4}),
    ],
)
def test_selectable_by_name_with_its_own_options(
    name: str, overrides: list[str], expected: dict[str, Any], manager
) -> None:
    cfg = load_config(None, [*FAKES, f"algorithm.name={name}", *overrides], manager=manager)
    options = cfg.algorithm.options
    assert isinstance(options, ALGORITHMS[name].Config)
    for key, value in expected.items():
        assert getattr(options, key) == value, key


def test_an_option_of_another_algorithm_is_refused(manager) -> None:
    with pytest.raises(ConfigError, match="algorithm.overlong_buffer: unknown key"):
        load_config(
            None, [*FAKES, "algorithm.name=gspo", "algorithm.overlong_buffer=4"], manager=manager
        )


def test_a_bad_value_is_reported_with_its_key(manager) -> None:
    with pytest.raises(ConfigError, match="gmpo has no dual clip"):
        load_config(None, [*FAKES, "algorithm.name=gmpo", "algorithm.dual_clip=2"], manager=manager)
