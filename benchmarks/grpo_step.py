"""Time one GRPO step per phase on the tiny models, and the training phase's FLOP/s.

For each tiny size this builds a checkpoint and an arithmetic task in a temporary folder,
runs GRPO steps in-process through ``RLTrainer`` (strategy ``local``, engine ``hf``,
reward ``math``, fp32), calling ``trainer.step(i)`` directly (``train()`` would also
checkpoint and export the model), and prints per phase the seconds per step and its share
of the step, generated and train tokens/s, and the training phase's achieved FLOP/s next to
this machine's measured fp32 matmul FLOP/s.

FLOP estimate (dense decoder, attention score FLOPs ignored -- sequences here are short):

    train FLOPs    = 6 * N * tokens * epochs   (forward 2*N*tokens + backward 4*N*tokens)
    logprob FLOPs  = 2 * N * tokens * passes   (no-grad recompute: policy, plus reference
                                                when the algorithm uses one)

where N is the number of model parameters (tied embeddings counted once: the output
projection is a real matmul, the input lookup is not) and tokens = sum of the rollout's
attention_mask (prompt + response tokens, padding excluded). Achieved FLOP/s = FLOPs /
phase seconds; the fraction is achieved / measured matmul FLOP/s (best of a few fp32
2048x2048 matmuls on the same torch thread settings).

Run from the repository root::

    .venv/bin/python benchmarks/grpo_step.py --sizes 5m,30m --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PHASES = ("generate", "reward", "logprobs", "train", "sync")
TRAIN_FORMULA = "train FLOPs = 6 * N_params * tokens * epochs"
LOGPROB_FORMULA = "logprob FLOPs = 2 * N_params * tokens * passes"
TOKENS_NOTE = "tokens = sum(attention_mask) of the rollout (prompt + response, no padding)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="5m,30m", help="Comma-separated tiny sizes (5m, 30m).")
    p.add_argument("--steps", type=int, default=3, help="Measured steps (after 1 warm-up).")
    p.add_argument("--prompts-per-step", type=int, default=8, help="Prompts per GRPO step.")
    p.add_argument("--samples", type=int, default=8, help="Samples per prompt (group size).")
    p.add_argument("--max-new-tokens", type=int, default=16, help="Response length cap.")
    p.add_argument("--epochs", type=int, default=1, help="Passes over each rollout.")
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=0,
        help="Rows per forward pass; 0 = the whole rollout in one micro-batch.",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default.")
    p.add_argument("--seed", type=int, default=0, help="Model, data and run seed.")
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


# ---------------------------------------------------------------------- matmul peak
def measure_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 ``n x n`` matmul throughput in FLOP/s (2 n^3 per product)."""
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    out = torch.empty(n, n, dtype=torch.float32)
    torch.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


# ---------------------------------------------------------------------- one size
def make_manager() -> Any:
    import lightrft_plugin_grpo.plugin
    from lightrft_core.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    return pm


def build_trainer(size: str, root: Path, args: argparse.Namespace) -> Any:
    from lightrft_core.config import load_config
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import build_tiny_checkpoint
    from lightrft_core.trainer.rl import RLTrainer

    model_dir = build_tiny_checkpoint(root / "model", size, seed=args.seed)
    data = write_task_data(
        root / "data", ArithmeticTask(), sft=0, rl=512, held_out=16, seed=args.seed
    )
    rows = args.prompts_per_step * args.samples
    manager = make_manager()
    cfg = load_config(
        None,
        [
            f"run.output_dir={root / 'run'}",
            f"run.seed={args.seed}",
            f"data.train_path={data['train']}",
            f"data.eval_path={data['eval']}",
            "data.input_key=prompt",
            "data.label_key=answer",
            "data.apply_chat_template=false",
            "data.max_prompt_length=32",
            "model.name=language",
            f"model.path={model_dir}",
            "strategy.name=local",
            "engine.name=hf",
            f"engine.n_samples_per_prompt={args.samples}",
            "engine.temperature=1.0",
            f"engine.max_new_tokens={args.max_new_tokens}",
            "algorithm.name=grpo",
            "reward.name=math",
            f"trainer.max_steps={args.steps + 1}",
            f"trainer.prompts_per_step={args.prompts_per_step}",
            f"trainer.micro_batch_size={args.micro_batch_size or rows}",
            f"trainer.epochs={args.epochs}",
            "trainer.eval_every=0",
            "trainer.save_every=0",
            "logging.tensorboard=false",
        ],
        manager=manager,
    )
    return RLTrainer(cfg, manager)


def count_parameters(module: torch.nn.Module) -> int:
    """Unique parameters (``parameters()`` yields a tied tensor once)."""
    return sum(p.numel() for p in module.parameters())


def run_size(size: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"lightrft-bench-{size}-") as tmp:
        trainer = build_trainer(size, Path(tmp), args)
        n_params = count_parameters(getattr(trainer.actor, "model", trainer.actor))
        epochs = trainer.cfg.trainer.epochs
        logprob_passes = 1 + (trainer.c.reference is not None)

        # Record each step's rollout as the trainer hands it to the training phase.
        seen: list[dict[str, int]] = []
        original_train = trainer._train

        def recording_train(rollout: Any, step: int) -> dict[str, float]:
            seen.append(
                {
                    "rows": len(rollout),
                    "tokens": int(rollout.attention_mask.sum()),
                    # the padded grid: what is computed when one micro-batch holds it all
                    "padded_tokens": int(rollout.attention_mask.numel()),
                    "generated": int(rollout.action_mask.sum()),
                }
            )
            return original_train(rollout, step)

        trainer._train = recording_train

        # Time the optimizer step (clip + AdamW + zero_grad), which runs inside "train".
        strategy = trainer.c.strategy
        original_opt_step = strategy.optimizer_step
        opt_seconds = [0.0]

        def timed_optimizer_step(*a: Any, **kw: Any) -> float:
            start = time.perf_counter()
            try:
                return original_opt_step(*a, **kw)
            finally:
                opt_seconds[0] += time.perf_counter() - start

        strategy.optimizer_step = timed_optimizer_step

        steps: list[dict[str, Any]] = []
        for i in range(1, args.steps + 2):
            opt_seconds[0] = 0.0
            metrics = trainer.step(i)
            if i == 1:  # warm-up: first-call allocations, lazy imports
                continue
            metrics["time/train_optimizer"] = opt_seconds[0]
            steps.append({"metrics": metrics, "rollout": seen[-1]})

    return summarize(size, n_params, epochs, logprob_passes, steps, peak)


def summarize(
    size: str,
    n_params: int,
    epochs: int,
    logprob_passes: int,
    steps: list[dict[str, Any]],
    peak: float,
) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(s["metrics"].get(key, 0.0) for s in steps)

    step_s = mean("time/step")
    phases = {name: mean(f"time/{name}") for name in PHASES}
    phases["other"] = max(0.0, step_s - sum(phases.values()))
    tokens = statistics.fmean(s["rollout"]["tokens"] for s in steps)
    padded = statistics.fmean(s["rollout"]["padded_tokens"] for s in steps)
    generated = statistics.fmean(s["rollout"]["generated"] for s in steps)
    rows = statistics.fmean(s["rollout"]["rows"] for s in steps)

    train_flops = 6.0 * n_params * tokens * epochs
    logprob_flops = 2.0 * n_params * tokens * logprob_passes
    optimizer_s = mean("time/train_optimizer")
    fwd_bwd_s = phases["train"] - optimizer_s
    train_fps = train_flops / phases["train"] if phases["train"] else 0.0
    fwd_bwd_fps = train_flops / fwd_bwd_s if fwd_bwd_s > 0 else 0.0
    logprob_fps = logprob_flops / phases["logprobs"] if phases["logprobs"] else 0.0
    return {
        "size": size,
        "params": n_params,
        "measured_steps": len(steps),
        "rows_per_step": rows,
        "tokens_per_step": tokens,
        "padded_tokens_per_step": padded,
        "generated_tokens_per_step": generated,
        "epochs": epochs,
        "logprob_passes": logprob_passes,
        "step_s": step_s,
        "phase_s": phases,
        "phase_share": {k: v / step_s if step_s else 0.0 for k, v in phases.items()},
        "train_optimizer_s": optimizer_s,
        "generate_tokens_per_s": generated / phases["generate"] if phases["generate"] else 0.0,
        "train_tokens_per_s": tokens * epochs / phases["train"] if phases["train"] else 0.0,
        "train_flops_per_step": train_flops,
        "train_flops_per_s": train_fps,
        "train_fraction_of_matmul": train_fps / peak,
        "train_fwd_bwd_flops_per_s": fwd_bwd_fps,
        "train_fwd_bwd_fraction_of_matmul": fwd_bwd_fps / peak,
        "logprob_flops_per_step": logprob_flops,
        "logprob_flops_per_s": logprob_fps,
        "logprob_fraction_of_matmul": logprob_fps / peak,
        "reward_mean": mean("reward/mean"),
        "response_length": mean("response_length"),
    }


# ---------------------------------------------------------------------- output
def gflops(x: float) -> str:
    return f"{x / 1e9:8.2f} GFLOP/s"


def print_result(r: dict[str, Any], peak: float) -> None:
    print(
        f"\n== {r['size']}: {r['params'] / 1e6:.2f}M params, {r['rows_per_step']:.0f} rows/step, "
        f"{r['tokens_per_step']:.0f} tokens/step ({r['generated_tokens_per_step']:.0f} generated, "
        f"{r['padded_tokens_per_step']:.0f} with padding), "
        f"mean of {r['measured_steps']} steps =="
    )
    print(f"{'phase':<10} {'s/step':>9} {'share':>7}")
    for name, seconds in r["phase_s"].items():
        print(f"{name:<10} {seconds:9.3f} {r['phase_share'][name]:7.1%}")
        if name == "train":
            opt = r["train_optimizer_s"]
            print(f"{'  of which optimizer':<10} {opt:9.3f} {opt / r['step_s']:7.1%}")
    print(f"{'step':<10} {r['step_s']:9.3f} {1:7.1%}")
    print(f"generated tokens/s    {r['generate_tokens_per_s']:10.1f}")
    print(f"train tokens/s        {r['train_tokens_per_s']:10.1f}")
    print(f"{'':<22}{'achieved':>17}   {'matmul peak':>17}   {'fraction':>8}")
    print(
        f"{'train (fwd+bwd)':<22}{gflops(r['train_flops_per_s']):>17}   {gflops(peak):>17}   "
        f"{r['train_fraction_of_matmul']:8.1%}"
    )
    print(
        f"{'  excl. optimizer':<22}{gflops(r['train_fwd_bwd_flops_per_s']):>17}   "
        f"{gflops(peak):>17}   {r['train_fwd_bwd_fraction_of_matmul']:8.1%}"
    )
    print(
        f"{'logprobs (no grad)':<22}{gflops(r['logprob_flops_per_s']):>17}   {gflops(peak):>17}   "
        f"{r['logprob_fraction_of_matmul']:8.1%}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    from lightrft_core.models.tiny import TINY_SIZES

    unknown = [s for s in sizes if s not in TINY_SIZES]
    if unknown:
        print(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(TINY_SIZES)}")
        return 2

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" / "Loading weights" bars
    peak = measure_matmul_flops()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"fp32 2048x2048 matmul (best of 5): {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        f"config: {args.prompts_per_step} prompts x {args.samples} samples, "
        f"max_new_tokens {args.max_new_tokens}, epochs {args.epochs}, "
        f"1 warm-up + {args.steps} measured steps, fp32, strategy local, engine hf"
    )
    print(f"FLOPs: {TRAIN_FORMULA}; {LOGPROB_FORMULA}; {TOKENS_NOTE}")

    results = []
    for size in sizes:
        result = run_size(size, args, peak)
        print_result(result, peak)
        results.append(result)

    if args.output_json is not None:
        payload = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "matmul_fp32_flops_per_s": peak,
            "formulas": [TRAIN_FORMULA, LOGPROB_FORMULA, TOKENS_NOTE],
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results,
        }
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
