"""The GRPO train phase padded vs packed vs token-budget micro-batches, side by side.

One process builds a tiny checkpoint (``30m`` by default) and an ``RLTrainer`` (strategy
``local``, GRPO), then one synthetic rollout with a realistic spread of response lengths:
prompts of ``--prompt-min``..``--prompt-max`` tokens, responses drawn from a lognormal
(median ``--median``, sigma ``--sigma``) clipped to ``--min-len``..``--max-len`` tokens.
The same rollout (old log-probs from one no-grad pass, random advantages) trains under
each setting -- ``trainer._train``: forward, GRPO loss, backward and the AdamW step for
every micro-batch -- and the script prints per setting the seconds per train phase (median
of ``--repeats`` after one warm-up; wall clock and the process's CPU time), train tokens/s
(real prompt + response tokens, no padding), the tokens computed (padding included), the
number of forward passes and the peak CUDA memory, then the ratios to the padded run.

Settings:

* ``padded``: ``--micro-batch-size`` rows per pass, each padded to its longest row;
* ``packed``: the same rows per pass, packed -- ``trainer.packing=true``: all in one row,
  no padding, with flash-attention (its variable-length kernel) and with SDPA (one SDPA call
  per run of equal-length sequences, ``lightrft_core/actors/varlen_attention.py``); with
  eager attention into rows as wide as the longest and a block-diagonal mask;
* ``budget``: packed, micro-batches by ``--max-tokens`` tokens (default: the rollout's mean
  tokens per row x ``--micro-batch-size``), longest first, balanced --
  ``trainer.max_tokens_per_micro_batch``.

Run from the repository root (a small CPU check, then a GPU-sized one)::

    .venv/bin/python benchmarks/packing.py --size 5m --rows 16 --max-len 128 --repeats 1
    .venv/bin/python benchmarks/packing.py --rows 256 --micro-batch-size 16
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

SETTINGS = ("padded", "packed", "budget")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="30m", help="Tiny model size (5m, 30m).")
    p.add_argument("--rows", type=int, default=64, help="Rollout rows (samples).")
    p.add_argument("--group-size", type=int, default=8, help="GRPO samples per prompt.")
    p.add_argument("--micro-batch-size", type=int, default=8, help="Rows per padded pass.")
    p.add_argument("--max-tokens", type=int, default=0, help="Token budget; 0 = derived.")
    p.add_argument("--median", type=float, default=64.0, help="Median response length.")
    p.add_argument("--sigma", type=float, default=1.0, help="Lognormal sigma of lengths.")
    p.add_argument("--min-len", type=int, default=8, help="Shortest response.")
    p.add_argument("--max-len", type=int, default=512, help="Longest response.")
    p.add_argument("--prompt-min", type=int, default=16, help="Shortest prompt.")
    p.add_argument("--prompt-max", type=int, default=48, help="Longest prompt.")
    p.add_argument("--repeats", type=int, default=3, help="Timed train phases per setting.")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (bf16 on GPU).")
    p.add_argument("--attn", default="auto", help="model.attn_implementation.")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default.")
    p.add_argument("--seed", type=int, default=0, help="Model, lengths and run seed.")
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    args = p.parse_args(argv)
    if args.rows % args.group_size:
        p.error("--rows must be a multiple of --group-size")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


# ---------------------------------------------------------------------- set-up
def build_trainer(root: Path, args: argparse.Namespace) -> Any:
    import lightrft_plugin_grpo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import build_tiny_checkpoint
    from lightrft_core.plugins import PluginManager
    from lightrft_core.trainer.rl import RLTrainer

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_grpo.plugin, name="grpo")
    model_dir = build_tiny_checkpoint(root / "model", args.size, seed=args.seed)
    data = write_task_data(root / "data", ArithmeticTask(), sft=0, rl=64, held_out=0, seed=0)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    cfg = load_config(
        None,
        [
            f"run.output_dir={root / 'run'}",
            f"run.seed={args.seed}",
            f"data.train_path={data['train']}",
            "data.input_key=prompt",
            "data.label_key=answer",
            "data.apply_chat_template=false",
            "model.name=language",
            f"model.path={model_dir}",
            f"model.dtype={dtype}",
            f"model.attn_implementation={args.attn}",
            "strategy.name=local",
            "engine.name=hf",
            f"engine.n_samples_per_prompt={args.group_size}",
            "algorithm.name=grpo",
            "reward.name=math",
            f"trainer.prompts_per_step={args.rows // args.group_size}",
            f"trainer.micro_batch_size={args.micro_batch_size}",
            "trainer.learning_rate=1e-6",
            "logging.tensorboard=false",
        ],
        manager=manager,
    )
    return RLTrainer(cfg, manager)


def response_lengths(args: argparse.Namespace, generator: torch.Generator) -> list[int]:
    """Lognormal lengths (median ``--median``) clipped to ``--min-len``..``--max-len``."""
    normal = torch.randn(args.rows, generator=generator, dtype=torch.float64)
    raw = torch.exp(torch.log(torch.tensor(args.median)) + args.sigma * normal)
    return [int(v) for v in raw.round().clamp(args.min_len, args.max_len).tolist()]


def make_rollout(args: argparse.Namespace) -> Any:
    """A right-padded rollout of random tokens with the lengths of ``response_lengths``."""
    from lightrft_core.trainer.experience import RolloutBatch

    g = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(args.prompt_min, args.prompt_max + 1, (args.rows,), generator=g)
    responses = response_lengths(args, g)
    totals = [int(p) + r for p, r in zip(prompts.tolist(), responses, strict=True)]
    width = max(totals)
    attention_mask = torch.zeros(args.rows, width, dtype=torch.long)
    action_mask = torch.zeros(args.rows, width - 1, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompts.tolist(), responses, strict=True)):
        attention_mask[row, : p + r] = 1
        action_mask[row, p - 1 : p - 1 + r] = True
    sequences = torch.randint(0, 256, (args.rows, width), generator=g) * attention_mask
    return RolloutBatch(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        rewards=torch.rand(args.rows, generator=g),
        engine_log_probs=torch.zeros(args.rows, width - 1),
        group_size=args.group_size,
        advantages=torch.randn(args.rows, width - 1, generator=g) * action_mask,
    )


# ---------------------------------------------------------------------- measuring
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def computed_tokens(trainer: Any, rollout: Any) -> tuple[int, int]:
    """Tokens one train phase computes (padding included) and its number of passes."""
    from lightrft_core.actors.packing import pack_padded_rows, packs_into_one_row

    t = trainer.cfg.trainer
    one_row = packs_into_one_row(trainer.actor.hf_model())
    total, passes = 0, 0
    for rows in trainer._micro_batches(rollout, torch.arange(len(rollout))):
        mb = rollout.select(rows)
        if t.packing:
            packed = pack_padded_rows(mb.sequences, mb.attention_mask, one_row=one_row)
            total += packed.sequences.numel()
        else:
            total += mb.sequences.numel()
        passes += 1
    return total, passes


def measure(trainer: Any, rollout: Any, setting: str, args: argparse.Namespace) -> dict:
    t = trainer.cfg.trainer
    t.packing = setting != "padded"
    t.max_tokens_per_micro_batch = args.max_tokens if setting == "budget" else None
    trainer._train(rollout, 1)  # warm-up: allocations, kernels
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds, cpu_seconds = [], []
    for repeat in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer._train(rollout, 2 + repeat)
        sync()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    tokens = int(rollout.attention_mask.sum())
    computed, passes = computed_tokens(trainer, rollout)
    train_s = statistics.median(seconds)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "setting": setting,
        "train_s": train_s,
        "train_cpu_s": statistics.median(cpu_seconds),
        "train_tokens_per_s": tokens / train_s,
        "tokens": tokens,
        "computed_tokens": computed,
        "passes": passes,
        "peak_mib": peak,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lightrft-bench-packing-") as tmp:
        trainer = build_trainer(Path(tmp), args)
        rollout = make_rollout(args)
        trainer.cfg.trainer.packing = True  # the old log-probs of the rollout, packed
        rollout.old_log_probs = trainer._log_probs(trainer.actor, rollout)
        mean_tokens = float(rollout.attention_mask.sum()) / args.rows
        if not args.max_tokens:
            args.max_tokens = max(int(mean_tokens * args.micro_batch_size), args.max_len)
        results = [measure(trainer, rollout, setting, args) for setting in SETTINGS]
        impl = trainer.actor.hf_model().config._attn_implementation
        layout = packed_layout(trainer.actor.hf_model())
    lengths = rollout.action_mask.sum(-1).float()
    return {
        "size": args.size,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "attn_implementation": impl,
        "packed_layout": layout,
        "rows": args.rows,
        "micro_batch_size": args.micro_batch_size,
        "max_tokens": args.max_tokens,
        "response_length": {
            "mean": float(lengths.mean()),
            "median": float(lengths.median()),
            "max": float(lengths.max()),
        },
        "results": results,
    }


def packed_layout(hf_model: Any) -> str:
    """How the ``packed`` and ``budget`` settings lay out a pass, for the report."""
    from lightrft_core.actors.packing import packs_into_one_row

    impl = hf_model.config._attn_implementation
    if not packs_into_one_row(hf_model):
        return "rows as wide as the longest sequence, block-diagonal mask"
    if impl == "sdpa":
        return "one row per pass, SDPA per sequence (no mask)"
    return "one row per pass, flash-attention variable-length kernel"


def print_report(report: dict[str, Any]) -> None:
    r = report["response_length"]
    print(
        f"\n== {report['size']} on {report['device']} ({report['attn_implementation']}): "
        f"{report['rows']} rows, responses mean {r['mean']:.0f} / median {r['median']:.0f} / "
        f"max {r['max']:.0f} tokens; {report['micro_batch_size']} rows per padded or packed "
        f"pass, budget {report['max_tokens']} tokens =="
    )
    print(f"packed and budget: {report['packed_layout']}")
    print(
        f"{'setting':<8} {'train s':>9} {'cpu s':>9} {'tokens/s':>10} {'computed':>9} "
        f"{'passes':>7} {'peak MiB':>9} {'speed-up':>9} {'cpu ratio':>9}"
    )
    base = report["results"][0]
    for res in report["results"]:
        peak = "n/a" if res["peak_mib"] is None else f"{res['peak_mib']:.0f}"
        print(
            f"{res['setting']:<8} {res['train_s']:9.3f} {res['train_cpu_s']:9.3f} "
            f"{res['train_tokens_per_s']:10.0f} {res['computed_tokens']:9d} {res['passes']:7d} "
            f"{peak:>9} {base['train_s'] / res['train_s']:8.2f}x "
            f"{base['train_cpu_s'] / res['train_cpu_s']:8.2f}x"
        )
    print(
        f"(real tokens {base['tokens']}; 'computed' counts padding; speed-up = padded train s / "
        "setting train s, same process; cpu s: the process's CPU time (all threads), the "
        "steadier figure on a busy machine)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print_report(report)
    if args.output_json is not None:
        args.output_json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
