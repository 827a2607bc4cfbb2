"""The RL loop's train phase against this machine's matmul peak (fp32 and bf16).

Measures, in one process:

1. **Peak**: the best of a few ``n x n`` matmuls (``--peak-size``, default 2048) in fp32 and
   in bf16 (on CPUs with AMX, bf16 matmuls run on the AMX tiles), ``2 n^3`` FLOPs each,
   5 products for each of 4 fresh operand pairs, measured before the phases and again
   after them (the best counts: on a shared host the same product's rate varies, in bf16
   by up to 3x between runs minutes apart).
2. **Train phase**: a GRPO ``RLTrainer`` on a tiny model (``--size``, default ``30m``;
   strategy ``local``, engine ``hf``, reward ``math``) runs one step, which gives a real
   rollout (advantages included); then the loop's own train phase (``RLTrainer._train``:
   micro-batches, forward, policy loss, backward, clipping, AdamW) is timed on that rollout
   ``--repeats`` times for each micro-batch size (``--micro-batch-sizes``; 0 = the whole
   rollout in one forward) and precision (``--precisions``). Beside it, the bare
   forward + backward of the actor on the same micro-batches (no loss, no optimizer) and
   the optimizer step alone, so that the gap to the peak splits into the model's own
   kernels, the optimizer, and the loop's overhead.
3. **GEMM ceiling**: the model's own matrix products alone at their exact shapes, in the
   same dtype and on the same clock, with operands already in that dtype: for every Linear
   forward ``X W^T`` and backward ``dY W``, ``dY^T X`` over the rollout's tokens (one packed
   pass), and per layer and sequence length the attention's ``Q K^T``, ``P V`` and their four
   backward products (``train_gemms``). Its fraction of the peak is what any implementation
   of this model could reach on this CPU.
4. **Strategies** (``--strategies``, default ``local``): ``local`` (bf16: fp32 weights and
   ``torch.autocast``), ``fsdp`` (one rank in this process; bf16: FSDP2's
   ``MixedPrecisionPolicy``, bf16 compute weights over fp32 sharded ones) and
   ``bf16-weights`` (bf16 only: the local strategy with the actor's parameters cast to bf16
   and no autocast, the optimizer stepping fp32 master copies, the bf16 weights refreshed
   after each step: ``compute_in_bf16``).
5. **Profile** (``--profile N``): the ``N`` operators that took the most time in one train
   phase per strategy and precision (``torch.profiler``, self time, share of the phase).

FLOPs of the train phase (forward 1x, backward 2x)::

    FLOPs = 6 * N * tokens + 12 * L * d * sum_i(T_i^2)

``N``: parameters (a tied output projection counted once, as the output head's matmul; the
input embedding lookup is no matmul). ``tokens``: sum of the rollout's attention mask
(prompt + response, no padding). The second term is attention (scores ``Q K^T`` and
``P V``: ``2 * 2 * T^2 * d`` per layer and sequence forward, no causal saving counted) with
``L`` layers, ``d`` the query width (heads x head size; the hidden size on the tiny models)
and ``T_i`` the length of sequence ``i``. Padding computed beyond that is waste, not
counted; the ``computed`` column shows the tokens the passes compute (the real ones with
``trainer.packing``, on by default for these models; else each micro-batch padded to its
longest row). Achieved FLOP/s = FLOPs /
seconds; fraction = achieved / the peak of the same dtype, both timed with the same clock.

Under load (other processes on the cores) wall times are unreliable. ``--clock cpu`` times
the process's CPU time instead (with ``--threads 1`` that leaves out the time spent waiting
for a core, though not the cache and memory traffic of the other processes): use it for
ratios on a shared machine, and the default wall clock on a quiet one. Run from the
repository root::

    .venv/bin/python benchmarks/train_peak.py --threads 1           # 30m, fp32 and bf16
    .venv/bin/python benchmarks/train_peak.py --threads 1 --clock cpu --profile 15
    .venv/bin/python benchmarks/train_peak.py --threads 1 --clock cpu --precisions bf16 \
        --strategies local,fsdp,bf16-weights --micro-batch-sizes 0   # bf16 three ways
    .venv/bin/python benchmarks/train_peak.py --size 5m --repeats 1 --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMULA = "FLOPs = 6 * N * tokens + 12 * L * d * sum_i(T_i^2)"
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
BF16_WEIGHTS = "bf16-weights"
STRATEGIES = ("local", "fsdp", BF16_WEIGHTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="30m", help="Tiny model size (5m, 30m).")
    p.add_argument("--precisions", default="fp32,bf16", help="Comma-separated: fp32, bf16.")
    p.add_argument(
        "--strategies",
        default="local",
        help="Comma-separated: local (bf16: fp32 weights + autocast), fsdp (one rank in this "
        f"process; bf16: FSDP2's bf16 compute weights), {BF16_WEIGHTS} (local with bf16 "
        "compute weights and fp32 master copies; bf16 only).",
    )
    p.add_argument("--prompts-per-step", type=int, default=16, help="Prompts in the rollout.")
    p.add_argument("--samples", type=int, default=8, help="Samples per prompt.")
    p.add_argument("--max-new-tokens", type=int, default=32, help="Response length cap.")
    p.add_argument(
        "--micro-batch-sizes",
        default="0,16",
        help="Comma-separated rows per forward; 0 = the whole rollout.",
    )
    p.add_argument("--repeats", type=int, default=2, help="Timed train phases per setting.")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n peak matmul.")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default.")
    p.add_argument("--seed", type=int, default=0, help="Model, data and run seed.")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: the process's CPU time (for a shared machine).",
    )
    p.add_argument(
        "--profile", type=int, default=0, help="Print the top N operators of a train phase."
    )
    p.add_argument(
        "--quick", action="store_true", help="Smaller peak matmul and rollout (a smoke run)."
    )
    p.add_argument("--output-json", type=Path, default=None, help="Also write results here.")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.profile < 0:
        p.error("--profile must be >= 0")
    args.strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = [name for name in args.strategies if name not in STRATEGIES]
    if unknown or not args.strategies:
        p.error(f"--strategies: choose from {', '.join(STRATEGIES)}")
    if args.quick:
        args.peak_size = min(args.peak_size, 512)
        args.prompts_per_step = min(args.prompts_per_step, 4)
        args.max_new_tokens = min(args.max_new_tokens, 8)
    return args


# ---------------------------------------------------------------------- timing
def best_seconds(
    fn: Callable[[], Any],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    *,
    warm_up: bool = True,
) -> float:
    """Best time on ``clock`` of ``repeats`` calls of ``fn``, after one warm-up call."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def matmul_peak(
    dtype: torch.dtype,
    n: int,
    clock: Callable[[], float] = time.perf_counter,
    repeats: int = 5,
    pairs: int = 4,
) -> float:
    """Best ``n x n`` matmul throughput in FLOP/s (``2 n^3`` per product): the best of
    ``repeats`` products for each of ``pairs`` freshly allocated operand pairs (on a shared
    host the same product's rate varies from one allocation and moment to the next)."""
    best = float("inf")
    for _ in range(pairs):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        product = functools.partial(torch.matmul, a, b, out=out)
        best = min(best, best_seconds(product, repeats, clock))
    return 2.0 * n**3 / best


# ---------------------------------------------------------------------- FLOPs
def attention_width(config: Any) -> int:
    """Width of the queries (heads x head size) of a transformers text config (``head_dim``
    is a field of some architectures only; the others derive it from the hidden size)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(config.num_attention_heads * head_dim)


def train_flops(n_params: int, layers: int, width: int, lengths: torch.Tensor) -> float:
    """``6 N tokens + 12 L d sum(T_i^2)`` for sequences of ``lengths`` (module docstring)."""
    lengths = lengths.double()
    return float(6.0 * n_params * lengths.sum() + 12.0 * layers * width * (lengths**2).sum())


def computed_tokens(
    lengths: torch.Tensor, micro_batches: list[torch.Tensor], *, packed: bool
) -> int:
    """Tokens the forward passes compute: the real ones when each pass is packed into one
    row, else each micro-batch padded to its longest row."""
    if packed:
        return int(lengths.sum())
    return sum(int(lengths[rows].max()) * len(rows) for rows in micro_batches)


# ---------------------------------------------------------------------- GEMM ceiling
@dataclass(frozen=True)
class Gemm:
    """``batch`` products ``[m, k] x [k, n]``; ``a_t`` / ``b_t``: that operand is read
    transposed (stored ``[k, m]`` / ``[n, k]``), as the autograd kernels read it."""

    batch: int
    m: int
    k: int
    n: int
    a_t: bool = False
    b_t: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def linear_gemms(in_features: int, out_features: int, tokens: int) -> list[Gemm]:
    """A Linear over ``tokens`` rows: forward ``X W^T``, backward ``dY W`` and ``dY^T X``."""
    return [
        Gemm(1, tokens, in_features, out_features, b_t=True),
        Gemm(1, tokens, out_features, in_features),
        Gemm(1, out_features, tokens, in_features, a_t=True),
    ]


def attention_gemms(heads: int, head_dim: int, length: int, sequences: int) -> list[Gemm]:
    """One layer's attention over ``sequences`` sequences of ``length`` tokens, all heads in
    one batch: forward ``Q K^T`` and ``P V``; backward ``dO V^T``, ``P^T dO``, ``dS K`` and
    ``dS^T Q``."""
    b, t, h = heads * sequences, length, head_dim
    return [
        Gemm(b, t, h, t, b_t=True),
        Gemm(b, t, t, h),
        Gemm(b, t, h, t, b_t=True),
        Gemm(b, t, t, h, a_t=True),
        Gemm(b, t, t, h),
        Gemm(b, t, t, h, a_t=True),
    ]


def train_gemms(model: torch.nn.Module, config: Any, lengths: torch.Tensor) -> Counter[Gemm]:
    """Every matrix product of one forward + backward of ``model`` over sequences of
    ``lengths`` (packed: each Linear sees all tokens at once; attention per sequence), with
    how often each shape occurs."""
    tokens = int(lengths.sum())
    gemms: Counter[Gemm] = Counter()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            gemms.update(linear_gemms(module.in_features, module.out_features, tokens))
    heads = config.num_attention_heads
    head_dim = attention_width(config) // heads
    for length, sequences in Counter(int(t) for t in lengths).items():
        for gemm in attention_gemms(heads, head_dim, length, sequences):
            gemms[gemm] += config.num_hidden_layers
    return gemms


def gemm_seconds(
    gemm: Gemm, dtype: torch.dtype, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best time of one ``gemm`` on operands of ``dtype`` laid out as it describes."""
    a = (
        torch.randn(gemm.batch, gemm.k, gemm.m)
        if gemm.a_t
        else torch.randn(gemm.batch, gemm.m, gemm.k)
    )
    b = (
        torch.randn(gemm.batch, gemm.n, gemm.k)
        if gemm.b_t
        else torch.randn(gemm.batch, gemm.k, gemm.n)
    )
    a, b = a.to(dtype), b.to(dtype)
    a = a.transpose(1, 2) if gemm.a_t else a
    b = b.transpose(1, 2) if gemm.b_t else b
    if gemm.batch == 1:
        a, b = a[0], b[0]
    return best_seconds(lambda: torch.matmul(a, b), repeats, clock)


def gemm_ceiling(
    gemms: Counter[Gemm], dtype: torch.dtype, repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """FLOPs and seconds of ``gemms`` alone (each shape timed on its own, times how often it
    occurs): all of them, the Linears' (``batch`` 1) and the attention's."""
    totals = dict.fromkeys(("flops", "seconds", "linear_flops", "linear_seconds"), 0.0)
    for gemm, count in gemms.items():
        flops, seconds = gemm.flops * count, gemm_seconds(gemm, dtype, repeats, clock) * count
        totals["flops"] += flops
        totals["seconds"] += seconds
        if gemm.batch == 1:
            totals["linear_flops"] += flops
            totals["linear_seconds"] += seconds
    return totals


# ---------------------------------------------------------------------- the trainer
def build_trainer(
    root: Path, args: argparse.Namespace, precision: str, strategy: str = "local"
) -> Any:
    """A GRPO ``RLTrainer`` writing to its own folder under ``root``; ``bf16-weights`` gets
    a ``local`` one (``compute_in_bf16`` converts it after the rollout)."""
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import build_tiny_checkpoint
    from lightrft_core.plugins import PluginManager
    from lightrft_core.trainer.rl import RLTrainer

    model_dir = root / "model"
    if not model_dir.exists():
        build_tiny_checkpoint(model_dir, args.size, seed=args.seed)
    data = write_task_data(
        root / "data", ArithmeticTask(), sft=0, rl=256, held_out=4, seed=args.seed
    )
    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_grpo.plugin, name="grpo")
    manager.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    cfg = load_config(
        None,
        [
            f"run.output_dir={root / f'run-{strategy}-{precision}'}",
            f"run.seed={args.seed}",
            f"data.train_path={data['train']}",
            "data.apply_chat_template=false",
            "data.max_prompt_length=32",
            f"model.path={model_dir}",
            f"strategy.name={'local' if strategy == BF16_WEIGHTS else strategy}",
            f"strategy.precision={precision}",
            f"engine.n_samples_per_prompt={args.samples}",
            f"engine.max_new_tokens={args.max_new_tokens}",
            "algorithm.name=grpo",
            "reward.name=math",
            "trainer.max_steps=1000",
            f"trainer.prompts_per_step={args.prompts_per_step}",
            "trainer.learning_rate=1e-6",
            "logging.tensorboard=false",
        ],
        manager=manager,
    )
    return RLTrainer(cfg, manager)


def one_rollout(trainer: Any) -> Any:
    """Run step 1 and keep the rollout its train phase received (scored, with advantages)."""
    kept: list[Any] = []
    train = trainer._train

    def keep(rollout: Any, step: int) -> dict[str, float]:
        kept.append(rollout)
        return train(rollout, step)

    trainer._train = keep
    trainer.step(1)
    trainer._train = train
    return kept[0]


def compute_in_bf16(trainer: Any) -> None:
    """Turn a ``local`` bf16 trainer into the third way: the actor's parameters become bf16
    compute weights (no autocast), their fp32 values are kept as master copies; each
    optimizer step casts the gradients to fp32, steps the masters (the optimizer's own,
    fp32 state) and refreshes the bf16 weights from them."""
    strategy, params = trainer.c.strategy, list(trainer.actor.parameters())
    masters = [p.data for p in params]
    for p in params:
        p.data = p.data.to(torch.bfloat16)
    strategy.autocast = contextlib.nullcontext
    optimizer_step = strategy.optimizer_step

    def master_step(*a: Any, **kw: Any) -> float:
        for p, master in zip(params, masters, strict=True):
            grad = None if p.grad is None else p.grad.float()
            p.grad = None
            p.data = master
            p.grad = grad
        try:
            return optimizer_step(*a, **kw)
        finally:
            for p, master in zip(params, masters, strict=True):
                p.data = master.to(torch.bfloat16)

    strategy.optimizer_step = master_step


def bare_forward_backward(trainer: Any, rollout: Any, micro_batches: list[torch.Tensor]) -> None:
    """The actor's forward (the loop's own, attention kernels included) and backward on
    ``micro_batches`` (log-prob sum as the loss), then the gradients dropped: the model's own
    work, without loss, optimizer or loop."""
    actor, strategy = trainer.actor, trainer.c.strategy
    for rows in micro_batches:
        mb = rollout.select(rows).to(strategy.device)
        with strategy.autocast():
            out = trainer._forward(actor, mb, return_entropy=True)
        (out.log_probs.float() * mb.action_mask).sum().backward()
    actor.zero_grad(set_to_none=True)


def actor_model(trainer: Any) -> Any:
    """The actor's Hugging Face model."""
    from lightrft_core.trainer.bootstrap import unwrapped_actor

    return unwrapped_actor(trainer.c.strategy, trainer.actor).hf_model()


def measure_precision(
    trainer: Any,
    rollout: Any,
    args: argparse.Namespace,
    peak: float,
    precision: str,
    strategy_name: str = "local",
) -> list[dict[str, Any]]:
    """The train phase, bare forward+backward and optimizer step per micro-batch size."""
    config = actor_model(trainer).config
    n_params = sum(p.numel() for p in actor_model(trainer).parameters())
    lengths = rollout.attention_mask.sum(dim=1)
    flops = train_flops(n_params, config.num_hidden_layers, attention_width(config), lengths)
    tokens = int(lengths.sum())
    clock = CLOCKS[args.clock]

    strategy = trainer.c.strategy
    optimizer_step = strategy.optimizer_step
    optimizer_seconds = [0.0]

    def timed_optimizer_step(*a: Any, **kw: Any) -> float:
        start = clock()
        try:
            return optimizer_step(*a, **kw)
        finally:
            optimizer_seconds[0] += clock() - start

    strategy.optimizer_step = timed_optimizer_step
    rows_total = len(rollout)
    results = []
    try:
        for size in [int(s) for s in args.micro_batch_sizes.split(",") if s.strip()]:
            size = size or rows_total
            trainer.cfg.trainer.micro_batch_size = size
            micro_batches = trainer._micro_batches(rollout, torch.arange(rows_total))
            train_s, opt_s = [], []
            trainer._train(rollout, 2)  # warm-up
            for _ in range(args.repeats):
                optimizer_seconds[0] = 0.0
                start = clock()
                trainer._train(rollout, 2)
                train_s.append(clock() - start)
                opt_s.append(optimizer_seconds[0])
            bare = best_seconds(  # the train phases above warmed the same shapes up
                lambda mbs=micro_batches: bare_forward_backward(trainer, rollout, mbs),
                args.repeats,
                clock,
                warm_up=False,
            )
            train = min(train_s)
            optimizer = statistics.median(opt_s)
            results.append(
                {
                    "strategy": strategy_name,
                    "precision": precision,
                    "micro_batch_size": size,
                    "rows": rows_total,
                    "tokens": tokens,
                    "packing": trainer.cfg.trainer.packing is True,
                    "computed_tokens": computed_tokens(
                        lengths, micro_batches, packed=trainer.cfg.trainer.packing is True
                    ),
                    "flops": flops,
                    "train_s": train,
                    "bare_fwd_bwd_s": bare,
                    "optimizer_s": optimizer,
                    "loop_overhead_s": max(0.0, train - bare - optimizer),
                    "train_flops_per_s": flops / train,
                    "train_fraction": flops / train / peak,
                    "bare_fraction": flops / bare / peak,
                }
            )
    finally:
        strategy.optimizer_step = optimizer_step
    return results


def measure_ceiling(
    trainer: Any,
    rollout: Any,
    dtype: torch.dtype,
    peak: float,
    repeats: int,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """The GEMM ceiling of one forward + backward of the whole rollout (one packed pass)."""
    model = actor_model(trainer)
    lengths = rollout.attention_mask.sum(dim=1)
    gemms = train_gemms(model, model.config, lengths)
    t = gemm_ceiling(gemms, dtype, repeats, clock)
    attention_flops = t["flops"] - t["linear_flops"]
    attention_seconds = t["seconds"] - t["linear_seconds"]
    return {
        "tokens": int(lengths.sum()),
        "shapes": len(gemms),
        "gemms": sum(gemms.values()),
        "flops": t["flops"],
        "seconds": t["seconds"],
        "flops_per_s": t["flops"] / t["seconds"],
        "fraction": t["flops"] / t["seconds"] / peak,
        "linear_fraction": t["linear_flops"] / t["linear_seconds"] / peak,
        "attention_fraction": attention_flops / attention_seconds / peak,
        "attention_share_of_seconds": attention_seconds / t["seconds"],
    }


def profile_train_phase(trainer: Any, rollout: Any, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators by self time in one train phase (the current micro-batch size),
    each with its calls, self seconds and share of the profiled phase's self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer._train(rollout, 2)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:top]
    ]


# ---------------------------------------------------------------------- output
def rescale_fractions(
    rows: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]], factors: dict[str, float]
) -> None:
    """Multiply the fractions of the peak measured against a first peak by
    ``factors[precision]`` (first peak / final peak)."""
    for row in rows:
        for key in ("train_fraction", "bare_fraction"):
            row[key] *= factors[row["precision"]]
    for precision, ceiling in ceilings.items():
        for key in ("fraction", "linear_fraction", "attention_fraction"):
            ceiling[key] *= factors[precision]


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'strategy':<12} {'prec':<5} {'mb':>4} {'packed':>6} {'tokens':>7} {'computed':>8} "
        f"{'train s':>8} {'GFLOP/s':>8} {'of peak':>8} {'fwd+bwd s':>10} {'of peak':>8} "
        f"{'optim s':>8} {'loop s':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['strategy']:<12} {r['precision']:<5} {r['micro_batch_size']:>4} "
            f"{'yes' if r['packing'] else 'no':>6} {r['tokens']:>7} "
            f"{r['computed_tokens']:>8} {r['train_s']:>8.3f} {r['train_flops_per_s'] / 1e9:>8.1f} "
            f"{r['train_fraction']:>8.1%} {r['bare_fwd_bwd_s']:>10.3f} {r['bare_fraction']:>8.1%} "
            f"{r['optimizer_s']:>8.3f} {r['loop_overhead_s']:>7.3f}"
        )


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Per strategy and precision, the best setting's fraction of the peak and how its time
    splits."""
    for strategy, precision in dict.fromkeys((r["strategy"], r["precision"]) for r in rows):
        best = max(
            (r for r in rows if (r["strategy"], r["precision"]) == (strategy, precision)),
            key=lambda r: r["train_fraction"],
        )
        train = best["train_s"]
        print(
            f"{strategy} {precision}: train phase at {best['train_fraction']:.1%} of the "
            f"{precision} matmul peak (micro-batch {best['micro_batch_size']}); of its time: "
            f"model forward + backward {best['bare_fwd_bwd_s'] / train:.0%}, optimizer "
            f"{best['optimizer_s'] / train:.0%}, loop {best['loop_overhead_s'] / train:.0%}"
        )


def print_ceiling(precision: str, ceiling: dict[str, Any]) -> None:
    print(
        f"GEMM ceiling {precision}: {ceiling['fraction']:.1%} of peak — the model's own "
        f"matmuls alone at their shapes ({ceiling['tokens']} tokens, {ceiling['shapes']} "
        f"shapes, {ceiling['gemms']} products): {ceiling['seconds']:.3f} s, "
        f"{ceiling['flops_per_s'] / 1e9:.1f} GFLOP/s; the Linears' at "
        f"{ceiling['linear_fraction']:.1%}, the attention's at "
        f"{ceiling['attention_fraction']:.1%} ({ceiling['attention_share_of_seconds']:.0%} "
        "of the time)"
    )


def print_profile(setting: str, ops: list[dict[str, Any]]) -> None:
    print(f"top operators of one {setting} train phase (self time):")
    for op in ops:
        print(f"  {op['share']:>6.1%} {op['self_s']:>8.3f} s {op['calls']:>6}x  {op['op']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in DTYPES]
    if unknown:
        print(f"unknown precision(s) {', '.join(unknown)}; choose from fp32, bf16")
        return 2
    from lightrft_core.models.tiny import TINY_SIZES

    if args.size not in TINY_SIZES:
        print(f"unknown size {args.size}; choose from {', '.join(TINY_SIZES)}")
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    clock = CLOCKS[args.clock]
    peaks = {p: matmul_peak(DTYPES[p], args.peak_size, clock) for p in precisions}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    print(
        f"train phase: {args.size} tiny model, GRPO, {args.prompts_per_step} prompts x "
        f"{args.samples} samples, max_new_tokens {args.max_new_tokens}, one optimizer step, "
        f"best of {args.repeats}"
    )
    print(f"{FORMULA}; fraction = achieved / peak of the same precision")
    rows: list[dict[str, Any]] = []
    profiles: dict[str, list[dict[str, Any]]] = {}
    ceilings: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lightrft-train-peak-") as tmp:
        for precision in precisions:
            for strategy in args.strategies:
                if strategy == BF16_WEIGHTS and precision != "bf16":
                    continue
                trainer = build_trainer(Path(tmp), args, precision, strategy)
                rollout = one_rollout(trainer)
                if strategy == BF16_WEIGHTS:
                    compute_in_bf16(trainer)
                if precision not in ceilings:
                    ceilings[precision] = measure_ceiling(
                        trainer, rollout, DTYPES[precision], peaks[precision], args.repeats, clock
                    )
                rows.extend(
                    measure_precision(trainer, rollout, args, peaks[precision], precision, strategy)
                )
                if args.profile:
                    profiles[f"{strategy} {precision}"] = profile_train_phase(
                        trainer, rollout, args.profile
                    )
    # the peak again, after the phases: a few short products can all land in a slow moment
    # of a shared host; the fractions are against the better of the two measurements
    first = peaks
    peaks = {p: max(first[p], matmul_peak(DTYPES[p], args.peak_size, clock)) for p in precisions}
    rescale_fractions(rows, ceilings, {p: first[p] / peaks[p] for p in precisions})
    for p, value in peaks.items():
        print(
            f"peak {p}: {args.peak_size}x{args.peak_size} matmul, the best of 4 x 5 before and "
            f"4 x 5 after the phases: {value / 1e9:.1f} GFLOP/s (before: {first[p] / 1e9:.1f})"
        )
    for name, ops in profiles.items():
        print_profile(name, ops)
    for precision, ceiling in ceilings.items():
        print_ceiling(precision, ceiling)
    print_rows(rows)
    print(
        "train s: the loop's train phase; fwd+bwd s: the actor's forward + backward alone on "
        "the same micro-batches; optim s: clipping + AdamW; loop s: the rest (loss, metrics, "
        "batch slicing, Python)"
    )
    print_summary(rows)
    if args.output_json is not None:
        payload = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "peaks_flops_per_s": peaks,
            "formula": FORMULA,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "gemm_ceilings": ceilings,
            "results": rows,
            "profiles": profiles,
        }
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
