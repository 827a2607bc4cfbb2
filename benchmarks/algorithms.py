"""Held-out accuracy of the demo task after the same RL budget, for every installed algorithm.

The demo pipeline (``lightrft_core.demo.run``) once: ``prepare`` builds the tiny model and
the task data, then one SFT warm-up. Then, for each algorithm, the demo's RL configuration
(``DemoPlan.rl_config``) from that same SFT checkpoint, with the same seed and the same
number of steps (``--steps``), evaluated with greedy decoding on the held-out prompts
before and after. Printed as a markdown table: accuracy before and after, the change, the
wall time of the RL run and the mean step time.

Everything goes through ``DemoPlan``, so the table follows the demo's task and
configurations as they change; ``--rl-override``/``--sft-override`` add ``key=value``
overrides (e.g. a smaller batch for a quick check).

Run from the repository root (the full-size comparison takes hours on a CPU)::

    .venv/bin/python benchmarks/algorithms.py --steps 100
    .venv/bin/python benchmarks/algorithms.py --steps 2 --algorithms grpo,ppo \\
        --sft-examples 64 --rl-prompts 64 --held-out 16 --sft-override sft.max_steps=2 \\
        --rl-override trainer.prompts_per_step=4 --rl-override engine.n_samples_per_prompt=4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="RL steps per algorithm.")
    p.add_argument(
        "--algorithms", default="", help="Comma-separated algorithm names; empty = every one."
    )
    p.add_argument("--seed", type=int, default=0, help="run.seed of the demo (SFT and RL).")
    p.add_argument("--model-size", default=None, help="Tiny model size; default: the demo's.")
    p.add_argument("--sft-examples", type=int, default=None, help="Default: the demo's.")
    p.add_argument("--rl-prompts", type=int, default=None, help="Default: the demo's.")
    p.add_argument("--held-out", type=int, default=None, help="Default: the demo's.")
    p.add_argument("--rl-override", action="append", default=[], help="key=value for every RL run.")
    p.add_argument("--sft-override", action="append", default=[], help="key=value for SFT.")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default.")
    p.add_argument("--workdir", type=Path, default=None, help="Keep the runs here.")
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    return p.parse_args(argv)


def base_plan(args: argparse.Namespace, root: Path) -> Any:
    """The demo plan every algorithm shares (task, data, SFT), sizes from the arguments."""
    from lightrft_core.demo.run import DemoPlan

    sizes = {
        "model_size": args.model_size,
        "sft_examples": args.sft_examples,
        "rl_prompts": args.rl_prompts,
        "held_out": args.held_out,
    }
    chosen = {key: value for key, value in sizes.items() if value is not None}
    return DemoPlan(output_dir=root, seed=args.seed, sft_overrides=args.sft_override, **chosen)


def rl_plan(plan: Any, algorithm: str, steps: int, extra: list[str]) -> Any:
    """``plan`` for one algorithm: its own RL folder, ``steps`` steps, evaluation before
    and after only, no intermediate checkpoints."""
    overrides = [
        f"run.output_dir={plan.output_dir / 'rl' / algorithm}",
        f"trainer.max_steps={steps}",
        f"trainer.eval_every={steps}",
        "trainer.save_every=0",
        "logging.tensorboard=false",
        *extra,
    ]
    return dataclasses.replace(plan, algorithm=algorithm, rl_overrides=overrides)


def run_algorithm(plan: Any, manager: Any, console: Any) -> dict[str, Any]:
    from lightrft_core.trainer.rl import RLTrainer

    cfg = plan.rl_config(manager)
    started = time.perf_counter()
    history = RLTrainer(cfg, manager, console=console).train().history
    seconds = time.perf_counter() - started
    evals = [r for r in history if "eval/accuracy" in r]
    steps = [r["time/step"] for r in history if "time/step" in r]
    return {
        "algorithm": plan.algorithm,
        "accuracy_before": evals[0]["eval/accuracy"],
        "accuracy_after": evals[-1]["eval/accuracy"],
        "rl_seconds": seconds,
        "step_seconds": statistics.mean(steps) if steps else float("nan"),
        "steps": len(steps),
    }


def markdown_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Demo task, {meta['steps']} RL steps per algorithm from one SFT checkpoint "
        f"(seed {meta['seed']}, {meta['held_out']} held-out prompts, greedy).",
        "",
        "| algorithm | accuracy before | accuracy after | change | RL time (s) | s/step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        change = r["accuracy_after"] - r["accuracy_before"]
        lines.append(
            f"| {r['algorithm']} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | "
            f"{change:+.3f} | {r['rl_seconds']:.1f} | {r['step_seconds']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from rich.console import Console

    from lightrft_core.demo.run import prepare
    from lightrft_core.plugins import get_plugin_manager
    from lightrft_core.trainer.sft import run_sft

    if args.threads:
        torch.set_num_threads(args.threads)
    manager = get_plugin_manager()  # every installed plugin
    installed = sorted(manager.registry.names("algorithm"))
    wanted = [a for a in args.algorithms.split(",") if a] or installed
    unknown = sorted(set(wanted) - set(installed))
    if unknown:
        print(f"unknown algorithm(s) {unknown}; installed: {', '.join(installed)}", file=sys.stderr)
        return 2
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory(prefix="lightrft-algorithms-") as tmp:
        root = args.workdir or Path(tmp)
        plan = base_plan(args, root)
        plans = [rl_plan(plan, name, args.steps, args.rl_override) for name in wanted]
        for each in plans:  # every configuration is valid before any work
            each.rl_config(manager)
        prepare(plan)
        print(f"SFT once ({plan.sft_examples} examples) ...", file=sys.stderr)
        run_sft(plan.sft_config(manager), manager, console=quiet)
        rows = []
        for each in plans:
            print(f"RL with {each.algorithm} ({args.steps} steps) ...", file=sys.stderr)
            rows.append(run_algorithm(each, manager, quiet))
    meta = {"steps": args.steps, "seed": args.seed, "held_out": plan.held_out}
    print(markdown_table(rows, meta))
    if args.output_json is not None:
        args.output_json.write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
