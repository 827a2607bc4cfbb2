"""Time per GRPO step and memory per rank with DeepSpeed ZeRO-2/3 on 2 ranks (tiny models).

For each tiny size this builds a checkpoint and an arithmetic task once, then runs GRPO
steps through ``RLTrainer`` (``trainer.step(i)`` directly, engine ``hf``, reward ``math``,
fp32) in one job per configuration:

* ``local``  -- one process, the ``local`` strategy (the baseline; ``--local-threads``,
  default 1: half the cores of the 2-rank jobs);
* ``zero2``, ``zero3`` -- ``torchrun --nproc-per-node 2``, strategy ``deepspeed``, one torch
  thread per rank; ``prompts_per_step`` is global, so every job does the same work.

Printed per job: seconds per step (the slowest rank's, as the loop reports it) and per
phase, the peak resident memory of each rank (``ru_maxrss``: everything the process
touched, libraries included), and the training state each rank holds -- parameters as
stored on that rank plus the optimizer's tensors (fp32 master copy, Adam moments) -- which
is where ZeRO's sharding shows. On CUDA the peak allocated device memory is added.

Run from the repository root::

    .venv/bin/python benchmarks/deepspeed_step.py --sizes 5m,30m --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

PHASES = ("generate", "reward", "logprobs", "train", "sync")
CONFIGS = {"local": ("local", None), "zero2": ("deepspeed", 2), "zero3": ("deepspeed", 3)}
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="5m,30m", help="Comma-separated tiny sizes (5m, 30m).")
    p.add_argument("--configs", default="local,zero2,zero3", help="Of: local, zero2, zero3.")
    p.add_argument("--steps", type=int, default=3, help="Measured steps (after 1 warm-up).")
    p.add_argument("--prompts-per-step", type=int, default=8, help="Global prompts per step.")
    p.add_argument("--samples", type=int, default=8, help="Samples per prompt (group size).")
    p.add_argument("--max-new-tokens", type=int, default=16, help="Response length cap.")
    p.add_argument("--micro-batch-size", type=int, default=16, help="Rows per forward pass.")
    p.add_argument(
        "--local-threads",
        type=int,
        default=1,
        help="torch threads of `local` (1: the cores it uses equal one rank's; 2 threads "
        "on a busy 2-core machine run several times slower)",
    )
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    # internal: one job
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


# ---------------------------------------------------------------------- one job (a rank)
def make_manager() -> Any:
    import lightrft_plugin_deepspeed.plugin
    import lightrft_plugin_grpo.plugin
    from lightrft_core.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_deepspeed.plugin, name="deepspeed")
    return pm


def build_trainer(args: argparse.Namespace, workdir: Path, job: str) -> Any:
    from lightrft_core.config import load_config
    from lightrft_core.trainer.rl import RLTrainer

    strategy, stage = CONFIGS[job]
    manager = make_manager()
    extra = [f"strategy.zero_stage={stage}"] if stage else []
    cfg = load_config(
        None,
        [
            f"run.output_dir={workdir / job}",
            f"data.train_path={workdir / 'data' / 'train.jsonl'}",
            "data.input_key=prompt",
            "data.label_key=answer",
            "data.apply_chat_template=false",
            "data.max_prompt_length=32",
            f"model.path={workdir / 'model'}",
            f"strategy.name={strategy}",
            *extra,
            f"engine.n_samples_per_prompt={args.samples}",
            f"engine.max_new_tokens={args.max_new_tokens}",
            "reward.name=math",
            f"trainer.max_steps={args.steps + 1}",
            f"trainer.prompts_per_step={args.prompts_per_step}",
            f"trainer.micro_batch_size={args.micro_batch_size}",
            "trainer.eval_every=0",
            "trainer.save_every=0",
            "logging.tensorboard=false",
        ],
        manager=manager,
    )
    return RLTrainer(cfg, manager)


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def training_state_bytes(trainer: Any) -> int:
    """Parameters as this rank stores them plus every tensor the optimizer holds."""
    module = trainer.c.strategy.unwrap(trainer.actor)
    stored = [getattr(p, "ds_tensor", p) for p in module.parameters()]
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    held = [p for g in inner.param_groups for p in g["params"]]
    held += [v for state in inner.state.values() for v in state.values()]
    own = {id(p) for p in module.parameters()}
    return tensor_bytes(stored) + tensor_bytes([t for t in held if id(t) not in own])


def run_job(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.job == "local":
        torch.set_num_threads(args.local_threads)
    trainer = build_trainer(args, args.workdir, args.job)
    s = trainer.c.strategy
    steps = []
    for i in range(1, args.steps + 2):
        metrics = trainer.step(i)
        if i > 1:  # step 1 warms up: first-call allocations, lazy imports
            steps.append(metrics)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    state_mib = training_state_bytes(trainer) / 2**20
    device_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    per_rank = s.all_gather(torch.tensor([[rss_mib, state_mib, device_mib]], dtype=torch.float64))
    if s.is_rank_0:
        result = {
            "job": args.job,
            "ranks": s.world_size,
            "step_s": statistics.fmean(m["time/step"] for m in steps),
            "phase_s": {p: statistics.fmean(m[f"time/{p}"] for m in steps) for p in PHASES},
            "peak_rss_mib": per_rank[:, 0].tolist(),
            "state_mib": per_rank[:, 1].tolist(),
            "device_peak_mib": per_rank[:, 2].tolist(),
            "params": sum(getattr(p, "ds_numel", p.numel()) for p in trainer.c.actor.parameters()),
        }
        (args.workdir / f"{args.job}.json").write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------------- the driver
def launch(job: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    own = [__file__, "--job", job, "--workdir", str(workdir)]
    own += ["--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step)]
    own += ["--samples", str(args.samples), "--max-new-tokens", str(args.max_new_tokens)]
    own += ["--micro-batch-size", str(args.micro_batch_size)]
    own += ["--local-threads", str(args.local_threads)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "build" / "torch_extensions"))
    if CONFIGS[job][0] == "local":
        command = [sys.executable, *own]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", "2", *own]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"job {job} failed:\n{done.stdout[-2000:]}\n{done.stderr[-6000:]}")
    return json.loads((workdir / f"{job}.json").read_text(encoding="utf-8"))


def print_table(size: str, results: list[dict[str, Any]]) -> None:
    params = results[0]["params"] / 1e6
    print(f"\n== {size} ({params:.2f}M params): mean of the measured steps ==")
    header = f"{'config':<7} {'ranks':>5} {'s/step':>7} " + " ".join(f"{p:>8}" for p in PHASES)
    print(header + f" {'peak RSS/rank MiB':>18} {'train state/rank MiB':>21}")
    for r in results:
        phases = " ".join(f"{r['phase_s'][p]:8.3f}" for p in PHASES)
        rss = "/".join(f"{v:.0f}" for v in r["peak_rss_mib"])
        state = "/".join(f"{v:.1f}" for v in r["state_mib"])
        print(f"{r['job']:<7} {r['ranks']:>5} {r['step_s']:7.3f} {phases} {rss:>18} {state:>21}")
        if any(r["device_peak_mib"]):
            print(f"{'':<7} device peak MiB/rank: {r['device_peak_mib']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.job is not None:
        run_job(args)
        return 0
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import TINY_SIZES, build_tiny_checkpoint

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    jobs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [s for s in sizes if s not in TINY_SIZES] + [j for j in jobs if j not in CONFIGS]
    if bad:
        print(f"unknown size(s)/config(s): {', '.join(bad)}")
        return 2
    print(
        f"torch {torch.__version__}; {args.prompts_per_step} prompts x {args.samples} samples "
        f"per step (global), max_new_tokens {args.max_new_tokens}, micro-batch "
        f"{args.micro_batch_size}, 1 warm-up + {args.steps} measured steps, fp32; local: "
        f"1 process x {args.local_threads} threads, zero2/zero3: 2 ranks x 1 thread (gloo)"
    )
    everything = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"lightrft-ds-bench-{size}-") as tmp:
            workdir = Path(tmp)
            build_tiny_checkpoint(workdir / "model", size, seed=0)
            write_task_data(workdir / "data", ArithmeticTask(), sft=0, rl=512, held_out=16, seed=0)
            results = [launch(job, args, workdir) for job in jobs]
        print_table(size, results)
        everything[size] = results
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(everything, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
