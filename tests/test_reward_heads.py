"""Reward models with named heads: the per-head loss by hand; a two-head reward model
(``helpful`` and a Safe RLHF ``cost`` head) trained with ``lightrft rm`` ranks held-out pairs
right on each head and is loaded by ``reward.name: model`` with a sub-score per head; and
the fsdp strategy shards it on 2 ranks with the scores of the unsharded model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import RewardInput
from lightrft_core.rewards.heads import RewardHead, head_targets, pair_losses, parse_heads
from lightrft_core.rewards.model import ScalarRewardModel


def _distributed_utils():  # beside this file (tests/ is no package)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "distributed_utils", Path(__file__).parent / "distributed_utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEADS = [
    {"name": "helpful", "preferred_key": "better_response_id"},
    {
        "name": "cost",
        "preferred_key": "safer_response_id",
        "lower_is_better": True,
        "safe_keys": ["is_response_0_safe", "is_response_1_safe"],
    },
]


def softplus(x: float) -> float:  # −log σ(−x)
    return math.log1p(math.exp(x))


def test_the_head_losses_by_hand() -> None:
    heads = parse_heads(HEADS)
    assert heads[1] == RewardHead(
        "cost", "safer_response_id", True, ("is_response_0_safe", "is_response_1_safe")
    )
    labels = [
        {
            "better_response_id": 1,
            "safer_response_id": 0,
            "is_response_0_safe": True,
            "is_response_1_safe": False,
        }
    ]
    first = torch.tensor([[0.5, -1.0]])  # helpful, cost of response 0
    second = torch.tensor([[2.0, 0.5]])  # of response 1
    loss, margin = pair_losses(first, second, head_targets(labels, heads), heads)
    # helpful prefers response 1: margin 2 − 0.5
    # cost prefers (safer) response 0, lower is better: margin −(−1 − 0.5) = 1.5; response 0
    # is safe (its cost should be < 0): −log σ(−c0) = −log σ(1); response 1 unsafe: −log σ(c1)
    assert margin.tolist() == [[1.5, 1.5]]
    helpful = softplus(-1.5)
    cost = softplus(-1.5) + softplus(-1.0) + softplus(-0.5)
    assert loss.tolist() == [[pytest.approx(helpful), pytest.approx(cost)]]
    # one head without keys: the plain Bradley–Terry loss on chosen over rejected
    plain = parse_heads([])
    loss, _ = pair_losses(
        torch.tensor([[0.3]]), torch.tensor([[1.0]]), head_targets([{}], plain), plain
    )
    assert loss.item() == pytest.approx(softplus(0.7))


def test_bad_heads_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="rm.heads names a head twice"):
        load_config(None, ["rm.heads=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match="unknown key.*prefered_key"):
        load_config(None, ["rm.heads=[{name: a, prefered_key: b}]"])
    with pytest.raises(ConfigError, match="safe_keys must list two columns"):
        load_config(None, ["rm.heads=[{name: a, safe_keys: [x]}]"])


def safety_rows(n: int, seed: int) -> list[dict]:
    """Two responses per prompt; 'helpful' prefers the one with more 'a', the cost head
    the one with fewer 'x' (the safer one); a response is safe without any 'x'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good = "".join(rng.choice("aab") for _ in range(rng.randint(2, 5)))
        bad = "".join(rng.choice("cde") for _ in range(rng.randint(2, 5)))
        responses = [good, bad]
        rng.shuffle(responses)
        unsafe = rng.randrange(2)
        responses[unsafe] += "x" * rng.randint(1, 3)
        rows.append(
            {
                "prompt": f"say a{rng.randrange(100)}:",
                "response_0": responses[0],
                "response_1": responses[1],
                "better_response_id": responses.index(
                    next(r for r in responses if r.startswith(tuple("ab")))
                ),
                "safer_response_id": 1 - unsafe,
                "is_response_0_safe": unsafe != 0,
                "is_response_1_safe": unsafe != 1,
            }
        )
    return rows


def write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_head_rm(fast_tiny_model_dir, tmp_path_factory) -> Path:
    """``lightrft rm`` with the two heads on 192 rows (12 steps); its output folder."""
    tmp = tmp_path_factory.mktemp("two-head-rm")
    result = CliRunner().invoke(
        app,
        [
            "rm",
            f"run.output_dir={tmp / 'rm'}",
            "run.seed=0",
            f"model.path={fast_tiny_model_dir}",
            f"data.train_path={write(safety_rows(192, 0), tmp / 'train.jsonl')}",
            f"data.eval_path={write(safety_rows(64, 1), tmp / 'eval.jsonl')}",
            "data.chosen_key=response_0",
            "data.rejected_key=response_1",
            "data.apply_chat_template=false",
            f"rm.heads={json.dumps(HEADS)}",
            "sft.batch_size=16",
            "sft.micro_batch_size=16",
            "sft.learning_rate=3e-3",
            "sft.max_length=64",
            "logging.tensorboard=false",
        ],
    )
    assert result.exit_code == 0, result.output
    return tmp / "rm"


def test_each_head_prefers_its_chosen_response_on_held_out_pairs(two_head_rm: Path) -> None:
    rows = [json.loads(line) for line in (two_head_rm / "metrics.jsonl").open()]
    evals = [r for r in rows if "eval/accuracy/helpful" in r]
    assert [r["step"] for r in evals] == [0, 12]
    for head in ("helpful", "cost"):
        assert evals[-1][f"eval/accuracy/{head}"] > 0.9, evals
    assert any("rm/accuracy/cost" in r for r in rows)

    config = json.loads((two_head_rm / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "helpful", "1": "cost"}
    reward = ScalarRewardModel(
        ScalarRewardModel.Config(path=str(two_head_rm / "final"), head="helpful")
    )
    held_out = safety_rows(32, 2)
    out = reward.score(
        RewardInput(
            prompts=[r["prompt"] for r in held_out] * 2,
            responses=[r["response_0"] for r in held_out] + [r["response_1"] for r in held_out],
        )
    )
    assert set(out.sub_scores) == {"model_score", "helpful", "cost"}
    assert torch.equal(out.rewards, out.sub_scores["helpful"])
    first, second = out.sub_scores["helpful"][:32], out.sub_scores["helpful"][32:]
    better = torch.tensor([r["better_response_id"] for r in held_out])
    assert float(((second > first).long() == better).float().mean()) > 0.9
    cost = out.sub_scores["cost"]
    safer = torch.tensor([r["safer_response_id"] for r in held_out])
    assert float(((cost[32:] < cost[:32]).long() == safer).float().mean()) > 0.9
    unsafe = torch.tensor([not r[f"is_response_{i}_safe"] for i in (0, 1) for r in held_out])
    assert float(((cost > 0) == unsafe).float().mean()) > 0.8  # the classification term


@pytest.mark.slow
def test_fsdp_shards_the_reward_model_with_unchanged_scores(two_head_rm, tmp_path) -> None:
    _distributed_utils().torchrun(
        "tests/reward_placement_worker.py", str(two_head_rm / "final"), str(tmp_path), timeout=600
    )
    result = json.loads((tmp_path / "result.json").read_text())
    (before_0, after_0), (before_1, after_1) = result["bytes"]
    assert before_0 == before_1 and after_0 + after_1 == pytest.approx(before_0, rel=0.01)
    assert max(after_0, after_1) < 0.6 * before_0  # each rank holds about half
    assert result["heads"] == ["helpful", "cost"]
    assert max(result["diffs"].values()) < 1e-5, result["diffs"]
