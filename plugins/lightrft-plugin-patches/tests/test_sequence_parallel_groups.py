"""Sequence parallelism with two groups: 4 ranks under fsdp with ``sequence_parallel_size=2``
(data parallel 2 x sequence parallel 2, one ``torchrun`` launch, gloo on the CPU), packed rows.
Each group takes its own share of the rows, metrics are reduced over one rank per group and
gradients averaged over all 4 ranks, so:

* two GRPO steps of the RL loop equal the same run on 2 ranks with every sequence whole (the
  same two data ranks: the same prompts and sampling seeds): metrics, written rollouts and
  final weights;
* two steps of the SFT loop equal the run on one process (``local``).

The runs are in ``sequence_parallel_groups_worker.py``."""

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
from lightrft_core.testing.training import write_letter_prompts
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


def write_inputs(root: Path) -> None:
    """A one-layer Qwen2 (hidden 32, 4 query and 2 key/value heads), 8 letter prompts and 16
    SFT rows of different lengths."""
    build_tiny_checkpoint(
        root / "model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    write_letter_prompts(root / "prompts.jsonl", count=8)
    pairs = [("ab", "cdefgh"), ("a", "bc"), ("abcdefghij", "k"), ("xy", "zzzz")] * 4
    (root / "sft.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs),
        encoding="utf-8",
    )


def rl_overrides(root: Path, out: Path) -> list[str]:
    """Two GRPO steps of 4 prompts x 3 samples (2 prompts per group or data rank, in 2
    micro-batches of 3 samples, each one packed row: with samples of one length, which the
    untrained model's mostly are, the split cuts the middle one), a reference model for the
    KL term, fp32, a learning rate that moves the weights."""
    return [
        f"run.output_dir={out}",
        f"data.train_path={root / 'prompts.jsonl'}",
        "data.apply_chat_template=false",
        f"model.path={root / 'model'}",
        "reward.name=letter",
        "reward.letter=\ufffd",  # the untrained model's bytes often decode to it: rewards vary
        "engine.n_samples_per_prompt=3",
        "engine.max_new_tokens=8",
        "trainer.prompts_per_step=4",
        "trainer.micro_batch_size=3",
        "trainer.packing=true",
        "trainer.max_steps=2",
        "trainer.learning_rate=1e-3",
        "algorithm.kl_coef=0.01",
        "logging.save_rollouts_every=1",
        "logging.tensorboard=false",
    ]


def sft_overrides(root: Path, out: Path) -> list[str]:
    """Two SFT steps of 8 rows (4 per group, in 2 micro-batches of 2 rows packed in one)."""
    return [
        f"run.output_dir={out}",
        f"data.train_path={root / 'sft.jsonl'}",
        "data.apply_chat_template=false",
        f"model.path={root / 'model'}",
        "sft.batch_size=8",
        "sft.micro_batch_size=2",
        "sft.learning_rate=1e-3",
        "trainer.packing=true",
        "logging.tensorboard=false",
    ]


def assert_same_metrics(got: Path, expected: Path) -> list[dict[str, float]]:
    """The two runs logged the same numbers at steps 1 and 2; returns the expected ones."""
    want_steps, have_steps = step_metrics(expected), step_metrics(got)
    assert [r["step"] for r in have_steps] == [1, 2]
    for want, have in zip(want_steps, have_steps, strict=True):
        assert set(have) == set(want)
        for key, value in want.items():
            assert math.isclose(have[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, have, want)
    return want_steps


def largest_difference(a: Path, b: Path) -> float:
    want, have = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(have) == set(want)
    return max(float((have[k] - want[k]).abs().max()) for k in want)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the 4-rank launch: ``model``, ``rl_split``, ``rl_pairs``, ``sft_split``
    and the worker's ``result.json``."""
    root = tmp_path_factory.mktemp("sp_groups")
    write_inputs(root)
    plan = {
        "rl_split": rl_overrides(root, root / "rl_split"),
        "rl_pairs": rl_overrides(root, root / "rl_pairs"),
        "sft_split": sft_overrides(root, root / "sft_split"),
    }
    (root / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    worker = str(HERE / "sequence_parallel_groups_worker.py")
    distributed_utils.torchrun(worker, str(root), nproc=4, timeout=300)
    return root


def test_rl_two_groups_equal_two_whole_ranks(runs: Path) -> None:
    assert json.loads((runs / "result.json").read_text()) == {
        "world_size": 4,
        "data_parallel_size": 2,
        "sequence_parallel_size": 2,
        "actor": True,
        "reference": True,
    }
    split, pairs = runs / "rl_split", runs / "rl_pairs"
    expected = assert_same_metrics(split, pairs)
    assert expected[0]["grad_norm"] > 0.0 and expected[1]["rollout_kl"] != 0.0
    for step in (1, 2):  # both groups' samples, each written once
        name = f"rollouts/step_{step:06d}.parquet"
        want, have = pd.read_parquet(pairs / name), pd.read_parquet(split / name)
        assert len(have) == 12
        assert have["prompt"].nunique() == 4
        assert have["response"].tolist() == want["response"].tolist()
        assert have["logprob_mismatch"].sub(want["logprob_mismatch"]).abs().max() < 1e-6
    assert largest_difference(runs / "model", pairs / "final") > 1e-3  # trained
    assert largest_difference(pairs / "final", split / "final") < 1e-5


def test_sft_two_groups_equal_one_process(runs: Path) -> None:
    whole = runs / "sft_whole"
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")  # the config's default algorithm
    run_sft(load_config(None, sft_overrides(runs, whole), manager=pm), pm)
    assert_same_metrics(runs / "sft_split", whole)
    assert largest_difference(runs / "model", whole / "final") > 1e-3  # trained
    assert largest_difference(whole / "final", runs / "sft_split" / "final") < 1e-5
