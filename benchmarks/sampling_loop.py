"""Per-token time of the ``hf`` engine's sampling loop against its floor and ``generate()``.

In one process, on a tiny model (``--sizes``, default ``5m,30m``; fp32), three ways of
producing the same rollout are timed, alternated, ``--repeats`` times each (medians):

* **floor**: the bare model forwards of the rollout -- a prefill and one decoding forward
  per step, with the engine's preallocated KV cache, the last position's logits only, no
  sampling; only the time inside the forwards counts. The engine's floor prefills each
  prompt once (its cache copied to its samples' rows, as the engine does) and replays the
  engine's batch sizes (finished rows leave the batch as ``compact_at`` says);
  ``generate()``'s prefills every row and runs the whole batch to the end;
* **engine**: ``HFEngine.generate`` (log-probs on, as in training);
* **generate**: transformers' ``model.generate()`` with the same sampling settings
  (temperature, top-k off, top-p, the same stop ids as EOS), rows left-padded, seeded with
  the engine's seed (both then draw from the same random stream).

Per token means per decoding step (one sampled token column, the prefill included), and
the overhead of a side is its time minus its floor, per step. Workloads: ``a``, 16 prompts
x 8 samples (128 rows) x 8 new tokens, no stop; ``b``, 4 prompts x 8 samples (32 rows) x
up to 256 new tokens, with three stop ids (about 1 in 86 tokens of a random model): the
response lengths vary, so dropping finished rows matters. The tokens of the engine and of
``generate()`` are compared (same seed: the same tokens, up to float rounding of the
forwards). ``--compile`` adds ``compile_decode``: its first (compiling) call, then its
median time. ``--kv-copies`` adds the engine under transformers' own ``sdpa`` attention
function, which copies the grouped key/value heads under the padding mask every layer and
step (LightRFT's reads them in place on CPU, ``grouped_attention.py``; the tiny models have
2x grouped heads). ``--clock cpu`` (with ``--threads 1``) reads the process's CPU time, for
a shared machine. Run from the repository root::

    .venv/bin/python benchmarks/sampling_loop.py
    .venv/bin/python benchmarks/sampling_loop.py --sizes 5m --workloads b --compile
    .venv/bin/python benchmarks/sampling_loop.py --kv-copies --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lightrft_core.actors import varlen_attention
from lightrft_core.engines import HFEngine
from lightrft_core.engines.kv_cache import preallocated_cache
from lightrft_core.interfaces import GenerationOutput, SamplingParams
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model

#: The clock of every timing: wall seconds, or the process's CPU seconds (``--clock cpu``).
now: Callable[[], float] = time.perf_counter

#: Byte ids used as stop tokens in workload ``b`` ("\x01", "\x02", "\x03").
STOP_IDS = [1, 2, 3]


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: int
    samples: int
    new_tokens: int
    stop_ids: tuple[int, ...]


WORKLOADS = {
    "a": Workload("a", prompts=16, samples=8, new_tokens=8, stop_ids=()),
    "b": Workload("b", prompts=4, samples=8, new_tokens=256, stop_ids=tuple(STOP_IDS)),
}


def prompts_for(count: int) -> list[list[int]]:
    """``count`` prompts of 4 to 8 byte tokens."""
    return [[40 + (i % 50), 41, 42 + (i % 7), 61] + [43] * (i % 5) for i in range(count)]


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as left-padded ``input_ids`` and ``attention_mask`` [B, P]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def engine_schedule(lengths: list[int], compact_at: float) -> list[int]:
    """The batch size of each decoding step of the engine (``check_every`` 1) for rows of
    response ``lengths``: finished rows leave once ``compact_at`` of the batch finished."""
    alive = list(lengths)
    sizes = []
    for step in range(max(lengths)):
        sizes.append(len(alive))
        finished = sum(1 for length in alive if length <= step + 1)
        if finished and finished >= compact_at * len(alive):
            alive = [length for length in alive if length > step + 1]
    return sizes


def floor_seconds(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, sizes: list[int], samples: int
) -> float:
    """Seconds inside the model forwards of a rollout whose step ``t`` runs ``sizes[t]``
    rows (the first ones): the prefill (of every ``samples``-th row, its cache then copied
    to the next ``samples`` rows), then one decoding forward per step."""
    batch, width = ids.shape
    cache = preallocated_cache(model.config, width + len(sizes))
    full_mask = torch.cat([mask, torch.ones((batch, len(sizes)), dtype=mask.dtype)], dim=-1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_ids, step_pos, step_mask = ids[::samples], positions[::samples], full_mask[::samples]
    last = positions[:, -1:]
    next_ids = torch.full((batch, 1), 65, dtype=torch.long)
    seconds = 0.0
    with torch.no_grad():
        for step, rows in enumerate(sizes):
            if step == 1 and samples > 1:
                cache.batch_select_indices(torch.arange(batch).div(samples, rounding_mode="floor"))
            if step > 0 and rows < step_ids.shape[0]:
                cache.batch_select_indices(torch.arange(rows))
                full_mask, last = full_mask[:rows], last[:rows]
                step_ids, step_pos, step_mask = next_ids[:rows], last, full_mask
            started = now()
            model(
                input_ids=step_ids,
                attention_mask=step_mask[:, : width + step],
                position_ids=step_pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            seconds += now() - started
            last = last + 1
            step_ids, step_pos, step_mask = next_ids[:rows], last, full_mask
    return seconds


def hf_generate(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams, pad: int
) -> torch.Tensor:
    """transformers' ``generate`` with ``params``' sampling; returns the new tokens [B, T]."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=params.temperature > 0,
        temperature=params.temperature,
        top_k=max(params.top_k, 0),
        top_p=params.top_p,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=list(params.stop_token_ids) or None,
        pad_token_id=pad,
    )
    torch.manual_seed(params.seed if params.seed is not None else 0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, ids.shape[1] :]


class ForwardClock:
    """Seconds spent inside ``model``'s forwards (top-level calls) while active."""

    def __init__(self, model: Any) -> None:
        self.model, self.seconds, self._started = model, 0.0, 0.0

    def __enter__(self) -> ForwardClock:
        self.seconds = 0.0
        self._hooks = [
            self.model.register_forward_pre_hook(lambda *_: self._start()),
            self.model.register_forward_hook(lambda *_: self._stop()),
        ]
        return self

    def _start(self) -> None:
        self._started = now()

    def _stop(self) -> None:
        self.seconds += now() - self._started

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()


def timed(model: Any, call: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds of ``call``, of which inside ``model``'s forwards)."""
    with ForwardClock(model) as clock:
        started = now()
        call()
        wall = now() - started
    return wall, clock.seconds


@contextmanager
def transformers_sdpa() -> Iterator[None]:
    """transformers' own ``sdpa`` attention function for the duration (grouped key/value
    heads copied under a mask), then LightRFT's again."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("sdpa", sdpa_attention_forward)
    try:
        yield
    finally:
        varlen_attention.install()


def engine_with_copies(engine: HFEngine, prompts: list[list[int]], params: SamplingParams) -> Any:
    with transformers_sdpa():
        return engine.generate(prompts, params)


def same_tokens(outputs: list[GenerationOutput], generated: torch.Tensor) -> int:
    """Rows whose engine response equals ``generate()``'s (its padding after a stop cut)."""
    rows = generated.tolist()
    return sum(o.token_ids == row[: len(o.token_ids)] for o, row in zip(outputs, rows, strict=True))


def run_workload(model: Any, tokenizer: Any, workload: Workload, args: argparse.Namespace) -> None:
    pad = tokenizer.pad_token_id
    prompts = prompts_for(workload.prompts)
    rows = [p for p in prompts for _ in range(workload.samples)]
    ids, mask = left_padded(rows, pad)
    params = SamplingParams(
        n=workload.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=workload.new_tokens,
        stop_token_ids=list(workload.stop_ids),
        seed=0,
    )
    engine = make_engine(model, tokenizer, compiled=False)
    outputs = engine.generate(prompts, params)  # warm-up; fixes the lengths
    lengths = [len(o.token_ids) for o in outputs]
    generated = hf_generate(model, ids, mask, params, pad)
    steps = {"engine": max(lengths), "generate()": generated.shape[1]}
    schedules = {
        "engine": engine_schedule(lengths, engine.config.compact_at),
        "generate()": [len(rows)] * steps["generate()"],
    }
    floor_of = {"engine": "floor, engine's", "generate()": "floor, generate()'s"}
    prefill_shared_by = {"engine": workload.samples, "generate()": 1}
    calls: dict[str, Callable[[], tuple[float, float]]] = {
        floor_of[side]: lambda s=side: (
            floor_seconds(model, ids, mask, schedules[s], prefill_shared_by[s]),
            0.0,
        )
        for side in steps
    }
    calls["engine"] = lambda: timed(model, lambda: engine.generate(prompts, params))
    calls["generate()"] = lambda: timed(model, lambda: hf_generate(model, ids, mask, params, pad))
    if args.kv_copies:
        copied = engine_with_copies(engine, prompts, params)
        same = [o.token_ids for o in copied] == [o.token_ids for o in outputs]
        calls[COPIES] = lambda: timed(model, lambda: engine_with_copies(engine, prompts, params))
        steps[COPIES], floor_of[COPIES] = steps["engine"], floor_of["engine"]
    if args.compile:
        compiled = make_engine(model, tokenizer, compiled=True)
        first, _ = timed(model, lambda: compiled.generate(prompts, params))
        calls["compiled"] = lambda: timed(model, lambda: compiled.generate(prompts, params))
        steps["compiled"], floor_of["compiled"] = steps["engine"], floor_of["engine"]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for repeat in range(args.repeats):
        for name in list(calls) if repeat % 2 == 0 else list(reversed(calls)):
            times[name].append(calls[name]())
    wall = {name: statistics.median(t[0] for t in values) for name, values in times.items()}
    inside = {name: statistics.median(t[1] for t in values) for name, values in times.items()}
    print(
        f"  workload {workload.name}: {len(rows)} rows x up to {workload.new_tokens} tokens, "
        f"lengths min/median/max {min(lengths)}/{int(statistics.median(lengths))}/"
        f"{max(lengths)} ({sum(lengths)} tokens); engine batch {len(rows)} -> "
        f"{schedules['engine'][-1]} rows; same tokens as generate(): "
        f"{same_tokens(outputs, generated)}/{len(rows)} rows"
    )
    print("    per step (ms)            total   in forwards  outside   overhead vs floor")
    for side, name in floor_of.items():
        if side == "engine" or name != floor_of["engine"]:
            print(f"    {name:<24} {wall[name] / steps[side] * 1e3:7.2f}")
    for side in steps:
        per_step, floor = wall[side] / steps[side], wall[floor_of[side]] / steps[side]
        in_forwards = inside[side] / steps[side]
        split = "" if side == "compiled" else f"{in_forwards * 1e3:10.2f}"
        outside = "" if side == "compiled" else f"{(per_step - in_forwards) * 1e3:9.2f}"
        print(
            f"    {side:<24} {per_step * 1e3:7.2f}  {split:>11}  {outside:>8}  "
            f"{(per_step - floor) * 1e3:7.2f} ({(per_step - floor) / per_step:.0%})"
        )
    print(
        f"    rollout s: engine {wall['engine']:.3f}, generate() {wall['generate()']:.3f}: "
        f"generate()/engine {wall['generate()'] / wall['engine']:.2f}x; engine/floor "
        f"{wall['engine'] / wall[floor_of['engine']]:.2f}x, generate()/floor "
        f"{wall['generate()'] / wall[floor_of['generate()']]:.2f}x"
    )
    if args.kv_copies:
        print(
            f"    K/V copies: {wall[COPIES]:.3f} s, in forwards {inside[COPIES]:.3f} s; "
            f"engine {wall['engine']:.3f} s, in forwards {inside['engine']:.3f} s: "
            f"copies/in place {wall[COPIES] / wall['engine']:.2f}x (in forwards "
            f"{inside[COPIES] / inside['engine']:.2f}x); same tokens: {same}"
        )
    if args.compile:
        print(
            f"    compile_decode: first call (compiles) {first:.1f} s, then "
            f"{wall['compiled']:.3f} s: eager/compiled {wall['engine'] / wall['compiled']:.2f}x;"
            f" pays after {pays_after(first, wall['engine'], wall['compiled'])}"
        )


def pays_after(first: float, eager: float, compiled: float) -> str:
    """How many rollouts the compile needs to pay for itself."""
    saving = eager - compiled
    if saving <= 0:
        return "never (no saving)"
    return f"{(first - compiled) / saving:.0f} rollouts"


#: The side of ``--kv-copies``: the engine under transformers' own ``sdpa`` function.
COPIES = "engine, K/V copies"


def make_engine(model: Any, tokenizer: Any, *, compiled: bool) -> HFEngine:
    engine = HFEngine(HFEngine.Config(max_batch_size=1024, compile_decode=compiled))
    engine.setup(model=model, tokenizer=tokenizer)
    engine.eos_token_ids = []  # stops come from each workload's stop ids only
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="5m,30m", help="tiny model sizes")
    parser.add_argument("--workloads", default="a,b", help="a: 128 x 8 tokens, b: 32 x <=256")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternated")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--compile", action="store_true", help="also time compile_decode")
    parser.add_argument(
        "--kv-copies",
        action="store_true",
        help="also time the engine under transformers' sdpa function (grouped K/V copied)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall seconds, or the process's CPU seconds (a shared machine; --threads 1)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (CPU seconds of several threads add up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global now
        now = time.process_time
    tokenizer = build_byte_tokenizer()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        f"fp32, temperature "
        f"{args.temperature}, top-p {args.top_p}, medians of {args.repeats} alternated runs"
    )
    for size in args.sizes.split(","):
        model = build_tiny_model(size, vocab_size=len(tokenizer)).eval()
        print(f"tiny {size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)")
        for name in args.workloads.split(","):
            run_workload(model, tokenizer, WORKLOADS[name], args)


if __name__ == "__main__":
    main()
