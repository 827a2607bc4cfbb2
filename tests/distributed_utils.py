"""Launching real multi-process jobs in tests (``torchrun``, gloo on the CPU), and the
worker those jobs run.

A torchrun launch costs about 10 s of start-up, so a test module makes few launches and
runs many checks in each: it writes a *plan* (a JSON list of jobs), starts
``torchrun tests/distributed_utils.py PLAN`` once, and reads what the jobs wrote. Every job
runs on every rank unless it names ``ranks``; the jobs are strategy-agnostic (the strategy
is a configuration override), so another strategy is tested by adding jobs, e.g.
``{"job": "grpo_step", "out": ..., "overrides": ["strategy.name=deepspeed", ...]}``.

Jobs:

* ``grpo_step``: one GRPO optimizer step of ``RLTrainer`` on a fixed rollout (each rank
  takes its contiguous share of the rows), then ``export_hf``; writes ``result.json``
  (train metrics, the log-prob difference between the trained model and its export) and
  the export in ``out/export``;
* ``sft``: ``run_sft``; ``train``: ``RLTrainer(...).train()``; ``rm``:
  ``run_reward_model_training``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


#: Keys of a run's metrics that are not numbers of the run (times, speeds).
UNTIMED = ("time/", "tokens_per_s", "timestamp")


def step_metrics(run: Path) -> list[dict[str, float]]:
    """The numbers ``run`` logged at each step (its ``metrics.jsonl``) without times and
    speeds: what two runs of the same work must agree on."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if isinstance(v, float | int) and not k.startswith(UNTIMED)}
        for r in records
    ]


# ---------------------------------------------------------------------- launching
def worker_env() -> dict[str, str]:
    """The environment of a launch: one thread per rank (2 ranks on 2 cores), quiet."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        TORCH_CPP_LOG_LEVEL="ERROR",
    )
    return env


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone`` (a free port on this machine) with ``nproc`` ranks."""
    return [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *args,
    ]


def torchrun(*args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``torchrun ... args`` to completion; fails the test with the output's tail if it
    exits non-zero."""
    proc = subprocess.run(
        torchrun_command(*args, nproc=nproc),
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        worker_errors = [line for line in output.splitlines() if line.startswith("[rank")]
        shown = "\n".join(worker_errors[-40:]) or output[-6000:]
        raise AssertionError(f"torchrun {' '.join(args)} exited {proc.returncode}:\n{shown}")
    return proc


def run_plan(plan: list[dict[str, Any]], path: Path, *, timeout: float = 600) -> None:
    """Write ``plan`` to ``path`` and run it on 2 ranks."""
    path.write_text(json.dumps(plan, indent=1), encoding="utf-8")
    torchrun(str(Path(__file__).resolve()), str(path), timeout=timeout)


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """``rank -> pid`` of the workers a torchrun process started (from their environment)."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            parent = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration, ValueError):
            continue
        if parent != launcher_pid:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(proc.name)
    return found


def kill_rank_when(
    proc: subprocess.Popen, rank: int, ready: Path, *, wait: float = 300
) -> float | None:
    """Once ``ready`` exists, SIGKILL ``rank`` of the torchrun job ``proc``; returns the
    time of the kill (``None`` if the job ended first)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None:
        if ready.exists():
            pid = rank_pids(proc.pid).get(rank)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return time.monotonic()
        time.sleep(0.2)
    return None


# ---------------------------------------------------------------------- worker side
def plugin_manager() -> Any:
    """The plugins the jobs use (grpo and fsdp), registered explicitly."""
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    from lightrft_core.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    return pm


def fixed_rollout(tokenizer: Any, *, prompts: int = 2, group: int = 4, seed: int = 0) -> Any:
    """``prompts * group`` samples: real prompts, random responses of 3..8 tokens (some
    ending in EOS), rewards in [0, 1]. The same on every rank and every run."""
    import torch

    from lightrft_core.interfaces import GenerationOutput
    from lightrft_core.trainer.experience import build_rollout

    g = torch.Generator().manual_seed(seed)
    prompt_ids = [tokenizer.encode(f"{i + 3}+{i}=") for i in range(prompts)]
    outputs = []
    for index in range(prompts):
        for _ in range(group):
            length = int(torch.randint(3, 9, (1,), generator=g))
            tokens = torch.randint(32, 127, (length,), generator=g).tolist()
            if torch.rand(1, generator=g) < 0.5:
                tokens[-1] = tokenizer.eos_token_id
            outputs.append(GenerationOutput(prompt_index=index, token_ids=tokens))
    rewards = torch.rand(len(outputs), generator=g)
    return build_rollout(
        prompt_ids, outputs, rewards, group_size=group, pad_id=tokenizer.pad_token_id
    )


def _config(job: dict[str, Any], pm: Any) -> Any:
    from lightrft_core.config import load_config

    config = job.get("config")
    return load_config(config, [f"run.output_dir={job['out']}", *job["overrides"]], manager=pm)


def grpo_step(job: dict[str, Any], pm: Any) -> None:
    import torch

    from lightrft_core.actors.language import ActorLanguage
    from lightrft_core.interfaces import AdvantageInput
    from lightrft_core.trainer.rl import RLTrainer

    trainer = RLTrainer(_config(job, pm), pm)
    s, c = trainer.c.strategy, trainer.c
    everything = fixed_rollout(c.tokenizer)
    share = len(everything) // s.world_size
    rollout = everything.select(list(range(s.rank * share, (s.rank + 1) * share)))
    rollout.old_log_probs = trainer._log_probs(trainer.actor, rollout)
    if c.reference is not None:
        rollout.ref_log_probs = trainer._log_probs(c.reference, rollout)
    rollout.advantages = c.algorithm.compute_advantages(
        AdvantageInput(
            rewards=rollout.rewards,
            action_mask=rollout.action_mask,
            group_size=rollout.group_size,
            old_log_probs=rollout.old_log_probs,
            ref_log_probs=rollout.ref_log_probs,
        )
    ).advantages
    metrics = trainer._train(rollout, step=1)
    out = Path(job["out"])
    s.export_hf(trainer.actor.model, out / "export", c.tokenizer)
    trained = trainer._log_probs(trainer.actor, everything)  # the sharded model, all rows
    if s.is_rank_0:
        from transformers import AutoModelForCausalLM

        exported = ActorLanguage.from_model(AutoModelForCausalLM.from_pretrained(out / "export"))
        with torch.no_grad():
            reloaded = exported(everything.sequences, everything.attention_mask).log_probs
        mask = everything.action_mask
        result = {
            "metrics": metrics,
            "world_size": s.world_size,
            "export_logprob_diff": float(((trained - reloaded) * mask).abs().max()),
        }
        (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


def sft(job: dict[str, Any], pm: Any) -> None:
    from lightrft_core.trainer.sft import run_sft

    run_sft(_config(job, pm), pm)


def train(job: dict[str, Any], pm: Any) -> None:
    from lightrft_core.trainer.rl import RLTrainer

    RLTrainer(_config(job, pm), pm).train()


def reward_model(job: dict[str, Any], pm: Any) -> None:
    from lightrft_core.trainer.reward_model import run_reward_model_training

    run_reward_model_training(_config(job, pm), pm)


JOBS = {"grpo_step": grpo_step, "sft": sft, "train": train, "rm": reward_model}


def run_jobs(plan_path: str, jobs: dict[str, Any], pm: Any) -> None:
    """Run the plan's jobs in order on this rank (a job may name its ``ranks``), with a
    barrier after each; then leave the process group."""
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    for job in json.loads(Path(plan_path).read_text(encoding="utf-8")):
        if rank in job.get("ranks", [rank]):
            jobs[job["job"]](job, pm)
        if dist.is_initialized():
            dist.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()


def main(plan_path: str) -> None:
    run_jobs(plan_path, JOBS, plugin_manager())


if __name__ == "__main__":
    main(sys.argv[1])
