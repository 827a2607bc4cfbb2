"""The longest sequence one training step fits in a fixed memory cap, with and without
Ulysses sequence parallelism.

Run under ``torchrun`` with ``P`` ranks. For each mode a tiny model (``--size``; heads
must divide over ``P``) trains one step on one sequence of ``T`` random tokens (the
``language`` actor's log-probs, loss ``-mean(log p)``, backward, AdamW step):

* ``without``: every rank holds the whole sequence (``sequence_parallel_size=1``);
* ``with``: the sequence is split over all ``P`` ranks (``ulysses_attention``).

``T`` doubles from ``--start-length`` until a step's peak memory on some rank passes
``--memory-cap-mb`` (or reaches ``--max-length``), then a binary search narrows the limit
to ``--resolution`` tokens. Peak memory per step: ``torch.cuda.max_memory_allocated`` on
GPUs (an out-of-memory error counts as not fitting), on CPUs the tensor memory tracked by
``torch.distributed._tools.mem_tracker.MemTracker`` (parameters, gradients, optimizer
states, activations, temporaries). Rank 0 prints, per mode, the longest length that fits
and its peak memory, then the ratio.

Run from the repository root (a small CPU check, then a GPU-sized one)::

    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        benchmarks/sequence_parallel.py --size 5m --memory-cap-mb 64 --max-length 2048
    torchrun --standalone --nproc-per-node 8 benchmarks/sequence_parallel.py \\
        --size 30m --memory-cap-mb 8000 --dtype bfloat16 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

MODES = ("without", "with")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="5m", help="Tiny model size (5m, 30m).")
    p.add_argument("--memory-cap-mb", type=float, default=64.0, help="Peak memory per rank.")
    p.add_argument("--start-length", type=int, default=64, help="First length tried.")
    p.add_argument("--max-length", type=int, default=1 << 20, help="Longest length tried.")
    p.add_argument("--resolution", type=int, default=64, help="Precision of the search.")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16.")
    p.add_argument("--attn", default="sdpa", help="eager, sdpa or flash_attention_2.")
    p.add_argument("--gradient-checkpointing", action="store_true", help="Recompute layers.")
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    return p.parse_args(argv)


def build_actor(args: argparse.Namespace) -> Any:
    from lightrft_core.actors.language import ActorLanguage
    from lightrft_core.models.tiny import build_tiny_model

    model = build_tiny_model(args.size, vocab_size=259, max_position_embeddings=1 << 22)
    config = ActorLanguage.Config(
        dtype=args.dtype,
        attn_implementation=args.attn,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    return ActorLanguage.from_model(model.to(device()), config)


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def peak_bytes(step: Callable[[], None], modules: list[torch.nn.Module]) -> float:
    """Peak memory of ``step`` on this rank (``inf`` when it runs out of memory)."""
    if device().type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            step()
        except torch.cuda.OutOfMemoryError:
            return float("inf")
        return float(torch.cuda.max_memory_allocated())
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*modules)
    with tracker:
        step()
    return float(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def fits(
    actor: Any, optimizer: torch.optim.Optimizer, length: int, cap: float
) -> tuple[bool, float]:
    """Whether one step on a sequence of ``length`` tokens stays under ``cap`` bytes on
    every rank, and the largest peak over the ranks."""
    g = torch.Generator().manual_seed(length)
    tokens = torch.randint(0, 256, (1, length), generator=g).to(device())
    mask = torch.ones_like(tokens)

    def step() -> None:
        log_probs = actor(tokens, mask).log_probs
        (-log_probs.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    peak = torch.tensor([peak_bytes(step, [actor, optimizer])], dtype=torch.float64)
    optimizer.zero_grad(set_to_none=True)  # after an out-of-memory error too
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return bool(peak.item() <= cap), float(peak.item())


def longest(actor: Any, args: argparse.Namespace, multiple: int) -> tuple[int, float]:
    """The longest length (a multiple of ``multiple``) whose step fits, and its peak."""
    optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-6)
    cap = args.memory_cap_mb * 2**20
    step = max(args.resolution, multiple)
    good, good_peak, bad = 0, 0.0, None
    length = max(args.start_length, step)
    while length <= args.max_length:
        ok, peak = fits(actor, optimizer, length, cap)
        if not ok:
            bad = length
            break
        good, good_peak, length = length, peak, length * 2
    if bad is None:
        return good, good_peak
    while bad - good > step:
        middle = (good + bad) // 2 // step * step
        if middle in (good, bad):
            break
        ok, peak = fits(actor, optimizer, middle, cap)
        if ok:
            good, good_peak = middle, peak
        else:
            bad = middle
    return good, good_peak


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if device().type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device().type == "cuda" else "gloo")
    from lightrft_plugin_patches.sequence_parallel import enable_sequence_parallel

    ranks = dist.get_world_size()
    results: dict[str, dict[str, float]] = {}
    for mode in MODES:
        actor = build_actor(args)
        if mode == "with":
            enable_sequence_parallel(actor, dist.group.WORLD)
        length, peak = longest(actor, args, multiple=ranks if mode == "with" else 1)
        results[mode] = {"longest_tokens": length, "peak_mb": peak / 2**20}
        del actor
        if device().type == "cuda":
            torch.cuda.empty_cache()
    if dist.get_rank() == 0:
        print(
            f"size {args.size}, {ranks} ranks, cap {args.memory_cap_mb:g} MB per rank, "
            f"{args.dtype}, {args.attn}, checkpointing {args.gradient_checkpointing}"
        )
        print(f"{'mode':<10}{'sp ranks':>10}{'longest tokens':>16}{'peak MB':>10}")
        for mode in MODES:
            r = results[mode]
            sp = ranks if mode == "with" else 1
            print(f"{mode:<10}{sp:>10}{r['longest_tokens']:>16}{r['peak_mb']:>10.1f}")
        base = results["without"]["longest_tokens"]
        ratio = results["with"]["longest_tokens"] / base if base else float("inf")
        print(f"with / without: {ratio:.2f}x longer")
        if args.output_json is not None:
            args.output_json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
