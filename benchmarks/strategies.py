"""Time per GRPO step and memory per rank of each training strategy, on the tiny models.

For each strategy in ``STRATEGIES`` and each tiny size, this builds a checkpoint and the
demo's arithmetic data in a temporary folder and launches ``torchrun`` with the strategy's
number of ranks; every rank runs ``RLTrainer.step`` (one warm-up step, then ``--steps``
measured ones) on its share of the same global batch. Reported per strategy and size:

* seconds per step (the slowest rank's ``time/step``; mean of the measured steps) and the
  share spent in ``train`` (forward, backward, optimizer);
* model + optimizer state per rank: the bytes of this rank's parameters, gradients are
  freed after the step, and optimizer state tensors (their local shards under fsdp);
* peak resident memory per rank (``ru_maxrss``: the whole process, torch included) and,
  on CUDA, peak allocated device memory.

Adding a strategy is one line in ``STRATEGIES`` (name, ranks, configuration overrides).

Run from the repository root::

    .venv/bin/python benchmarks/strategies.py --sizes 5m,30m --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: name -> (ranks, configuration overrides). One line per strategy.
STRATEGIES: dict[str, tuple[int, list[str]]] = {
    "local": (1, ["strategy.name=local"]),
    "fsdp": (2, ["strategy.name=fsdp"]),
    "fsdp-meta-init": (2, ["strategy.name=fsdp", "strategy.meta_init=true"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="5m,30m", help="Comma-separated tiny sizes (5m, 30m).")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="Which strategies.")
    p.add_argument("--steps", type=int, default=3, help="Measured steps (after 1 warm-up).")
    p.add_argument("--prompts-per-step", type=int, default=8, help="Global prompts per step.")
    p.add_argument("--samples", type=int, default=8, help="Samples per prompt.")
    p.add_argument("--max-new-tokens", type=int, default=16, help="Response length cap.")
    p.add_argument("--micro-batch-size", type=int, default=16, help="Rows per forward, per rank.")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per rank (OMP_NUM_THREADS)."
    )
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------- worker (per rank)
def state_bytes(model: Any, optimizer: Any) -> int:
    """Bytes of this rank's parameters and optimizer state (local shards of DTensors)."""

    def local(tensor: Any) -> Any:
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor

    total = sum(local(p).numel() * p.element_size() for p in model.parameters())
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "numel") and value.dim() > 0:
                total += local(value).numel() * value.element_size()
    return total


def worker(spec_path: Path) -> None:
    import torch
    import torch.distributed as dist

    from lightrft_core.config import load_config
    from lightrft_core.trainer.rl import RLTrainer

    spec = json.loads(spec_path.read_text())
    pm = plugin_manager()
    trainer = RLTrainer(load_config(None, spec["overrides"], manager=pm), pm)
    s = trainer.c.strategy
    steps = [trainer.step(i) for i in range(1, spec["steps"] + 2)][1:]  # drop the warm-up
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    device_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0
    mine = torch.tensor(
        [peak_rss, state_bytes(trainer.actor, trainer.optimizer) / 2**20, device_peak],
        dtype=torch.float64,
    )
    every = s.all_gather(mine.unsqueeze(0))  # [ranks, 3]
    if s.is_rank_0:
        result = {
            "ranks": s.world_size,
            "step_s": sum(m["time/step"] for m in steps) / len(steps),
            "train_s": sum(m["time/train"] for m in steps) / len(steps),
            "generate_s": sum(m["time/generate"] for m in steps) / len(steps),
            "peak_rss_mib": every[:, 0].tolist(),
            "state_mib": every[:, 1].tolist(),
            "device_peak_mib": every[:, 2].tolist(),
        }
        Path(spec["result"]).write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


def plugin_manager() -> Any:
    """The installed plugins (grpo, fsdp, and any other strategy plugin)."""
    from lightrft_core.plugins import PluginManager

    return PluginManager()


# ---------------------------------------------------------------------- driver
def common_overrides(root: Path, model_dir: Path, data: dict[str, Path], args: Any) -> list[str]:
    return [
        f"run.output_dir={root / 'run'}",
        f"data.train_path={data['train']}",
        "data.apply_chat_template=false",
        f"model.path={model_dir}",
        f"engine.n_samples_per_prompt={args.samples}",
        f"engine.max_new_tokens={args.max_new_tokens}",
        "reward.name=math",
        f"trainer.max_steps={args.steps + 1}",
        f"trainer.prompts_per_step={args.prompts_per_step}",
        f"trainer.micro_batch_size={args.micro_batch_size}",
        "trainer.eval_every=0",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "logging.log_every=1000",
    ]


def launch(name: str, root: Path, overrides: list[str], args: Any) -> dict[str, Any]:
    ranks, own = STRATEGIES[name]
    spec = root / f"{name}.json"
    result = root / f"{name}.result.json"
    spec.write_text(
        json.dumps({"overrides": [*overrides, *own], "steps": args.steps, "result": str(result)})
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        str(Path(__file__).resolve()),
        "--worker",
        str(spec),
    ]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(result.read_text())


def run(args: Any) -> dict[str, dict[str, Any]]:
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import build_tiny_checkpoint

    results: dict[str, dict[str, Any]] = {}
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"lightrft-strategies-{size}-") as tmp:
            root = Path(tmp)
            model_dir = build_tiny_checkpoint(root / "model", size, seed=0)
            data = write_task_data(
                root / "data", ArithmeticTask(), sft=0, rl=512, held_out=16, seed=0
            )
            overrides = common_overrides(root, model_dir, data, args)
            for name in args.strategies.split(","):
                results[f"{size}/{name}"] = launch(name, root, overrides, args)
                print_row(size, name, results[f"{size}/{name}"])
    return results


def print_row(size: str, name: str, r: dict[str, Any]) -> None:
    def mib(values: list[float]) -> str:
        return " / ".join(f"{v:.0f}" for v in values)

    def mib1(values: list[float]) -> str:
        return " / ".join(f"{v:.1f}" for v in values)

    print(
        f"| {size} | {name} | {r['ranks']} | {r['step_s']:.3f} | {r['train_s']:.3f} | "
        f"{r['generate_s']:.3f} | {mib1(r['state_mib'])} | {mib(r['peak_rss_mib'])} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return
    print(
        "| size | strategy | ranks | s/step | train s | generate s | "
        "params+optimizer MiB per rank | peak RSS MiB per rank |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    results = run(args)
    if args.output_json is not None:
        args.output_json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
