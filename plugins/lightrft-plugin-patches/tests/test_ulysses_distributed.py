"""Ulysses sequence parallelism on 2 ranks (one ``torchrun`` launch, gloo on the CPU):
log-probs and gradients equal the unsplit model's, for Llama (eager kernel) and Qwen2
(sdpa), and under the fsdp strategy with ``sequence_parallel_size=2``; and two GRPO steps
of the RL loop (``lightrft train``) with both ranks splitting every sequence equal the
same run on one process with the ``local`` strategy, and so do two PPO steps (the critic's
values split too) and two steps of the SFT loop (``lightrft sft``) and of the reward-model
loop (``lightrft rm``); sequence classifiers' scores and critics' values (padded and packed
rows), and their gradients, split over both ranks equal the unsplit ones. The checks run
in ``ulysses_worker.py``."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from safetensors.torch import load_file

import lightrft_plugin_grpo.plugin
from lightrft_core.config import load_config
from lightrft_core.models.tiny import build_tiny_checkpoint
from lightrft_core.plugins import PluginManager
from lightrft_core.testing.training import LetterPlugin, write_letter_prompts
from lightrft_core.trainer.reward_model import run_reward_model_training
from lightrft_core.trainer.rl import RLTrainer
from lightrft_core.trainer.sft import run_sft

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

pytestmark = pytest.mark.slow


def _load_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "distributed_utils", ROOT / "tests" / "distributed_utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


distributed_utils = _load_helpers()
step_metrics = distributed_utils.step_metrics


def rl_overrides(root: Path, out: Path) -> list[str]:
    """Two GRPO steps (2 prompts x 4 samples, a reference model for the KL term) of a
    one-layer Qwen2 with 4 query and 2 key/value heads, fp32, a learning rate that moves the
    weights, packed rows."""
    model = root / "model"
    if not model.exists():
        build_tiny_checkpoint(
            model,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    prompts = root / "prompts.jsonl"
    if not prompts.exists():
        write_letter_prompts(prompts, count=8)
    return [
        f"run.output_dir={out}",
        f"data.train_path={prompts}",
        "data.apply_chat_template=false",
        f"model.path={model}",
        "reward.name=letter",
        "reward.letter=\ufffd",  # the untrained model's bytes often decode to it: rewards vary
        "engine.n_samples_per_prompt=4",
        "engine.max_new_tokens=8",
        "trainer.prompts_per_step=2",
        "trainer.micro_batch_size=4",
        "trainer.packing=true",  # each micro-batch one packed row (sdpa), split over the ranks
        "trainer.max_steps=2",
        "trainer.learning_rate=1e-3",
        "algorithm.kl_coef=0.01",
        "logging.save_rollouts_every=1",
        "logging.tensorboard=false",
    ]


def sft_overrides(root: Path, out: Path, packing: bool) -> list[str]:
    """Two SFT steps (4 rows each, in 2 micro-batches) on the model of ``rl_overrides``,
    rows of different lengths (padding in every micro-batch, or packed in one row), fp32."""
    rows = root / "sft.jsonl"
    if not rows.exists():
        pairs = [("ab", "cdefgh"), ("a", "bc"), ("abcdefghij", "k"), ("xy", "zzzz")] * 2
        rows.write_text(
            "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs),
            encoding="utf-8",
        )
    return [
        f"run.output_dir={out}",
        f"data.train_path={rows}",
        "data.apply_chat_template=false",
        f"model.path={root / 'model'}",
        "sft.batch_size=4",
        "sft.micro_batch_size=2",
        "sft.learning_rate=1e-3",
        f"trainer.packing={str(packing).lower()}",
        "logging.tensorboard=false",
    ]


def ppo_overrides(root: Path, out: Path) -> list[str]:
    """``rl_overrides`` with PPO: a separate critic (a random value head, so that values
    and GAE advantages are not 0 from the first step) trained beside the policy."""
    return [
        *rl_overrides(root, out),
        "algorithm.name=ppo",
        "algorithm.value_head_init_std=0.1",
        "trainer.critic_learning_rate=1e-2",
    ]


def rm_overrides(root: Path, out: Path) -> list[str]:
    """Two reward-model steps (4 pairs each, in 2 micro-batches; sides of different lengths:
    padding in every micro-batch) and a held-out score before and after, on the model of
    ``rl_overrides`` read as a sequence classifier, fp32."""
    rows = root / "pairs.jsonl"
    if not rows.exists():
        pairs = [("ab", "aaa", "xyz w"), ("a", "a", "bcdefgh"), ("cd", "aab", "q")] * 3
        rows.write_text(
            "".join(
                json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in pairs
            ),
            encoding="utf-8",
        )
    return [
        f"run.output_dir={out}",
        f"data.train_path={rows}",
        f"data.eval_path={rows}",
        "data.apply_chat_template=false",
        f"model.path={root / 'model'}",
        "sft.batch_size=4",
        "sft.micro_batch_size=2",
        "sft.max_steps=2",
        "sft.learning_rate=1e-3",
        "logging.tensorboard=false",
    ]


def whole_run(overrides: list[str]) -> None:
    """The same run on one process, every sequence whole (``local``)."""
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_ppo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_ppo.plugin, name="ppo")
    pm.register(LetterPlugin(), name="letter")
    RLTrainer(load_config(None, overrides, manager=pm), pm).train()


def test_two_ranks_equal_the_unsplit_model(tmp_path: Path) -> None:
    split, whole = tmp_path / "split", tmp_path / "whole"
    (tmp_path / "rl.json").write_text(json.dumps(rl_overrides(tmp_path, split)))
    ppo_split, ppo_whole = tmp_path / "ppo_split", tmp_path / "ppo_whole"
    (tmp_path / "ppo.json").write_text(json.dumps(ppo_overrides(tmp_path, ppo_split)))
    sft_runs = {
        packing: (tmp_path / f"sft_split_{packing}", tmp_path / f"sft_whole_{packing}")
        for packing in (False, True)
    }
    sft_jobs = [sft_overrides(tmp_path, run, packing) for packing, (run, _) in sft_runs.items()]
    (tmp_path / "sft.json").write_text(json.dumps(sft_jobs))
    rm_split, rm_whole = tmp_path / "rm_split", tmp_path / "rm_whole"
    (tmp_path / "rm.json").write_text(json.dumps(rm_overrides(tmp_path, rm_split)))
    distributed_utils.torchrun(str(HERE / "ulysses_worker.py"), str(tmp_path), timeout=300)
    results = json.loads((tmp_path / "result.json").read_text())
    packed = {"packed-llama-eager", "packed-qwen2-sdpa"}
    classifiers = {"classifier-llama-eager", "classifier-qwen2-sdpa"}
    critics = {f"critic-{m}{p}" for m in ("llama-eager", "qwen2-sdpa") for p in ("", "-packed")}
    assert set(results) == {"llama-eager", "qwen2-sdpa", "fsdp", *packed, *classifiers, *critics}
    for case, diffs in results.items():
        output = "scores" if case in classifiers else "values" if case in critics else "log_probs"
        assert diffs[output] < 1e-5, case
        assert diffs["gradients"] < 1e-5, case
    for case in packed:  # packed rows split = padded rows whole; 5 + 3 + 2 + 2 + 0 scored
        assert results[case]["padded"] < 1e-5, case
        assert results[case]["scored"] == 12, case
    assert results["fsdp"]["data_parallel_size"] == 1

    # the RL loop split over both ranks = the one-rank run
    assert json.loads((tmp_path / "rl_result.json").read_text()) == {
        "actor": True,
        "reference": True,
    }
    whole_run(rl_overrides(tmp_path, whole))
    expected, got = step_metrics(whole), step_metrics(split)
    assert [r["step"] for r in got] == [1, 2]
    for want, have in zip(expected, got, strict=True):
        assert set(have) == set(want)
        for key, value in want.items():
            assert math.isclose(have[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, have, want)
    assert expected[0]["loss"] != 0.0 and expected[0]["rollout_kl"] == 0.0
    assert expected[1]["rollout_kl"] != 0.0  # the reference's log-probs: split on both ranks
    for step in (1, 2):  # the same samples (the group's rows written once), the same log-probs
        name = f"rollouts/step_{step:06d}.parquet"
        want, have = pd.read_parquet(whole / name), pd.read_parquet(split / name)
        assert have["response"].tolist() == want["response"].tolist()
        assert have["logprob_mismatch"].sub(want["logprob_mismatch"]).abs().max() < 1e-6
    initial = load_file(tmp_path / "model" / "model.safetensors")
    want = load_file(whole / "final" / "model.safetensors")
    have = load_file(split / "final" / "model.safetensors")
    assert max(float((want[k] - initial[k]).abs().max()) for k in want) > 1e-3  # trained
    assert max(float((have[k] - want[k]).abs().max()) for k in want) < 1e-5

    # PPO with its critic split over both ranks = the one-rank run
    assert json.loads((tmp_path / "ppo_result.json").read_text()) == {
        "actor": True,
        "reference": True,
        "critic": True,
    }
    whole_run(ppo_overrides(tmp_path, ppo_whole))
    expected, got = step_metrics(ppo_whole), step_metrics(ppo_split)
    assert [r["step"] for r in got] == [1, 2]
    assert expected[0]["critic/value_loss"] != 0.0 and expected[1]["critic/grad_norm"] > 0
    for want, have in zip(expected, got, strict=True):
        assert set(have) == set(want)
        for key, value in want.items():
            assert math.isclose(have[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, have, want)
    for folder in ("final", "final_critic"):
        want = {
            f"{f.name}:{k}": v
            for f in (ppo_whole / folder).glob("*.safetensors")
            for k, v in load_file(f).items()
        }
        have = {
            f"{f.name}:{k}": v
            for f in (ppo_split / folder).glob("*.safetensors")
            for k, v in load_file(f).items()
        }
        assert want and set(have) == set(want), folder
        assert max(float((have[k] - want[k]).abs().max()) for k in want) < 1e-5, folder

    # the SFT loop split over both ranks = the one-rank run, padded and packed
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")  # the config's default algorithm
    for packing, (sft_split, sft_whole) in sft_runs.items():
        run_sft(load_config(None, sft_overrides(tmp_path, sft_whole, packing), manager=pm), pm)
        expected, got = step_metrics(sft_whole), step_metrics(sft_split)
        assert [r["step"] for r in got] == [1, 2]
        for want, have in zip(expected, got, strict=True):
            assert set(have) == set(want)
            for key, value in want.items():
                assert math.isclose(have[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, packing)
        want = load_file(sft_whole / "final" / "model.safetensors")
        have = load_file(sft_split / "final" / "model.safetensors")
        assert max(float((want[k] - initial[k]).abs().max()) for k in want) > 1e-3  # trained
        assert max(float((have[k] - want[k]).abs().max()) for k in want) < 1e-5, packing

    # the reward-model loop split over both ranks = the one-rank run (which packs its rows)
    run_reward_model_training(load_config(None, rm_overrides(tmp_path, rm_whole), manager=pm), pm)
    expected, got = step_metrics(rm_whole), step_metrics(rm_split)
    assert [r["step"] for r in got] == [0, 1, 2, 2]  # held-out pairs, two steps, held-out
    assert expected[1]["grad_norm"] > 0
    for want, have in zip(expected, got, strict=True):
        assert set(have) == set(want)
        for key, value in want.items():
            assert math.isclose(have[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, have, want)
    want = load_file(rm_whole / "final" / "model.safetensors")
    have = load_file(rm_split / "final" / "model.safetensors")
    assert max(float((have[k] - want[k]).abs().max()) for k in want) < 1e-5
