"""LightRFT against TRL's ``GRPOTrainer`` on the same GRPO work, runs alternated.

Never part of ``make test``. The script installs TRL (``trl==1.16.0``) into a virtual
environment of its own (``build/peers-venv``, under ``constraints.txt``, with exactly the
torch, transformers, tokenizers, accelerate and datasets versions of the running ``.venv``),
builds the tiny models and data into ``build/peers/`` (cached), then runs each case as
separate processes, TRL and ``lightrft train`` alternated (A B A B ...), and prints the
median seconds per step of each side and their ratio.

Workloads:

- ``a-fp32`` / ``a-bf16``: the 5m tiny model, 16 prompts x 8 samples, 8 new tokens, one
  optimizer step per rollout, the whole rollout in one generation batch and one
  micro-batch on both sides (TRL: one ``generate`` call of the 128 rows; LightRFT:
  ``engine.max_batch_size`` and ``trainer.micro_batch_size`` 128), no gradient
  checkpointing; ``bf16`` = fp32 weights with bf16 autocast on both sides.
- ``b-defaults`` / ``b-best``: the 30m tiny model after a short SFT on worked additions
  (``7+3-2=`` -> ``7+3=10;10-2=8``: response length grows with the number of operands,
  2..28, so lengths vary up to the 256-token cap), 8 prompts x 4 samples, fp32.
  ``b-defaults``: each side's own defaults for the speed-only knobs (TRL: micro-batches
  of 8, gradient checkpointing on; LightRFT: micro-batches of 4). ``b-best``: TRL without
  gradient checkpointing and the whole rollout per micro-batch (``--trl-best``); LightRFT
  with ``--lightrft-best`` overrides (by default packing, token-budget micro-batches and,
  where vllm is installed, the vllm engine in fp32; its start-up happens before the first
  step, outside every step's time).

Time per step is measured inside each process, in steady state (``--warmup`` steps skipped):
TRL from ``on_step_begin`` to ``on_step_end`` of a callback, LightRFT ``time/step`` of
``metrics.jsonl``; with the phases generate / score / train of each side. ``--clock cpu``
(with ``--threads 1``) reads the process's CPU time instead, for a shared machine. Tokens
generated per step are printed for both sides as a check that they did the same work. Run
from the repository root::

    .venv/bin/python benchmarks/peers.py                       # everything (~10 min quiet)
    .venv/bin/python benchmarks/peers.py --cases a-fp32 --steps-a 3 --repeats-a 1
    .venv/bin/python benchmarks/peers.py --install-dry-run     # what pip would install
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRL_RUNNER = Path(__file__).resolve().parent / "peers" / "trl_grpo.py"
TRL_VERSION = "1.16.0"
#: Packages the peer venv shares with .venv, pinned to .venv's versions.
SHARED_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "datasets")
LEARNING_RATE = 1e-6
#: Workload (b): 2..28 one-digit operands (prompts up to 56 characters, worked responses
#: up to about 220).
MAX_OPERANDS = 28
CASES = ("a-fp32", "a-bf16", "b-defaults", "b-best")
#: LightRFT's best speed settings of workload (b): packed rows in token-budget micro-batches
#: and, where vLLM is installed, the vllm engine in fp32 (the case's precision).
PACKED_BEST = ("trainer.packing=true", "trainer.max_tokens_per_micro_batch=8192")
VLLM_BEST = ("engine.name=vllm", "engine.dtype=float32")
DEFAULT_TRL_BEST = ("gradient_checkpointing=false",)
#: Per-step phases reported for both sides (seconds).
PHASES = ("generate", "score", "train")


# ---------------------------------------------------------------------- options
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"Comma-separated: {CASES}.")
    p.add_argument("--steps-a", type=int, default=6, help="Measured steps per run, (a).")
    p.add_argument("--warmup-a", type=int, default=2, help="Warm-up steps skipped, (a).")
    p.add_argument("--repeats-a", type=int, default=3, help="TRL/LightRFT run pairs, (a).")
    p.add_argument("--steps-b", type=int, default=3, help="Measured steps per run, (b).")
    p.add_argument("--warmup-b", type=int, default=1, help="Warm-up steps skipped, (b).")
    p.add_argument("--repeats-b", type=int, default=1, help="TRL/LightRFT run pairs, (b).")
    p.add_argument("--size-b", default="30m", help="Tiny model size of workload (b).")
    p.add_argument("--prompts-b", type=int, default=8, help="Prompts per step, (b).")
    p.add_argument("--samples-b", type=int, default=4, help="Samples per prompt, (b).")
    p.add_argument("--max-new-tokens-b", type=int, default=256, help="Response cap, (b).")
    p.add_argument("--sft-steps", type=int, default=30, help="SFT optimizer steps before (b).")
    p.add_argument("--sft-batch", type=int, default=32, help="SFT rows per optimizer step.")
    p.add_argument(
        "--lightrft-best",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="LightRFT overrides of case b-best (repeatable; replaces the default "
        f"{' '.join((*PACKED_BEST, *VLLM_BEST))}, without the engine settings where vllm "
        "is not installed), e.g. engine.name=hf.",
    )
    p.add_argument(
        "--trl-best",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="GRPOConfig overrides of TRL in case b-best (repeatable; replaces the default "
        f"{' '.join(DEFAULT_TRL_BEST)}); the whole rollout per micro-batch unless "
        "per_device_train_batch_size is given.",
    )
    p.add_argument("--threads", type=int, default=0, help="OMP threads per run; 0 = default.")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="Step and phase times: wall-clock seconds (a quiet machine), or the process's CPU "
        "seconds (a shared machine: with --threads 1, about the wall time the process would "
        "take alone).",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=ROOT / "build" / "peers")
    p.add_argument("--venv", type=Path, default=ROOT / "build" / "peers-venv")
    p.add_argument("--install-dry-run", action="store_true", help="Show pip's plan and stop.")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="Install the peer venv, build the models and data and run the SFT, then stop.",
    )
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {CASES}")
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1 (CPU seconds of several threads add up)")
    for name in ("steps_a", "steps_b", "repeats_a", "repeats_b"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------- peer venv
def pinned_requirements() -> list[str]:
    """``trl`` and the packages shared with .venv at .venv's versions (no local label)."""
    pins = [f"{name}=={metadata.version(name).split('+')[0]}" for name in SHARED_PACKAGES]
    return [*pins, f"trl=={TRL_VERSION}"]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def peer_versions(venv: Path) -> dict[str, str]:
    code = (
        "import json; from importlib import metadata as m; "
        f"print(json.dumps({{n: m.version(n) for n in {(*SHARED_PACKAGES, 'trl')!r}}}))"
    )
    out = subprocess.run(
        [str(venv_python(venv)), "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def ensure_peer_venv(venv: Path, *, dry_run: bool) -> None:
    """Create (or check) the TRL virtual environment; refuse one whose versions differ."""
    expected = {name: metadata.version(name) for name in SHARED_PACKAGES}
    expected["trl"] = TRL_VERSION
    if not venv_python(venv).exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    elif not dry_run and peer_versions(venv) == expected:
        return
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-c", str(ROOT / "constraints.txt")]
    if dry_run:
        pip.append("--dry-run")
    pip += pinned_requirements()
    print(" ".join(pip), flush=True)
    subprocess.run(pip, check=True)
    if dry_run:
        return
    found = peer_versions(venv)
    if found != expected:
        raise SystemExit(f"peer venv versions {found} differ from .venv's {expected}")


# ---------------------------------------------------------------------- models and data
def chain_problem(rng: random.Random, max_operands: int) -> tuple[str, str, str]:
    """``7+3-2=``, its worked steps ``7+3=10;10-2=8`` and the answer ``8``."""
    numbers = [rng.randrange(10) for _ in range(rng.randint(2, max_operands))]
    prompt, value, steps = str(numbers[0]), numbers[0], []
    for number in numbers[1:]:
        op = rng.choice("+-")
        new = value + number if op == "+" else value - number
        prompt += f"{op}{number}"
        steps.append(f"{value}{op}{number}={new}")
        value = new
    return f"{prompt}=", ";".join(steps), str(value)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare_a(work: Path, seed: int) -> tuple[Path, Path]:
    """The 5m model and the demo's arithmetic prompts (cached in ``work``)."""
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import build_tiny_checkpoint

    model, data = work / f"model-5m-s{seed}", work / f"data-a-s{seed}"
    if not (model / "config.json").exists():
        build_tiny_checkpoint(model, "5m", seed=seed)
    if not (data / "train.jsonl").exists():
        write_task_data(data, ArithmeticTask(), sft=0, rl=1024, held_out=16, seed=seed)
    return model, data / "train.jsonl"


def prepare_b(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The (b) model after a short ``lightrft sft`` on worked additions, and RL prompts."""
    from lightrft_core.models.tiny import build_tiny_checkpoint

    data = work / f"data-b-s{args.seed}"
    sft_rng, rl_rng = random.Random(args.seed), random.Random(args.seed + 1)
    sft_rows, rl_rows = [], []
    for _ in range(args.sft_steps * args.sft_batch):
        prompt, response, _answer = chain_problem(sft_rng, max_operands=MAX_OPERANDS)
        sft_rows.append({"prompt": prompt, "response": response})
    for _ in range(1024):
        prompt, _response, answer = chain_problem(rl_rng, max_operands=MAX_OPERANDS)
        rl_rows.append({"prompt": prompt, "answer": answer})
    write_jsonl(data / "sft.jsonl", sft_rows)
    train = write_jsonl(data / "train.jsonl", rl_rows)
    base = work / f"model-{args.size_b}-s{args.seed}"
    if not (base / "config.json").exists():
        build_tiny_checkpoint(base, args.size_b, seed=args.seed)
    sft_dir = work / f"sft-{args.size_b}-s{args.seed}-{args.sft_steps}x{args.sft_batch}"
    final = sft_dir / "final"
    if not (final / "config.json").exists():
        shutil.rmtree(sft_dir, ignore_errors=True)
        overrides = [
            f"run.output_dir={sft_dir}",
            f"run.seed={args.seed}",
            f"data.train_path={data / 'sft.jsonl'}",
            "data.apply_chat_template=false",
            f"model.path={base}",
            "strategy.name=local",
            "sft.epochs=1",
            f"sft.batch_size={args.sft_batch}",
            f"sft.micro_batch_size={args.sft_batch}",
            "sft.learning_rate=2.0e-3",
            "sft.warmup_steps=4",
            "sft.max_length=384",
            "trainer.packing=true",  # the same gradients as padding, half the tokens
            "logging.tensorboard=false",
            "logging.progress_bar=false",
            "logging.log_every=10",
        ]
        print(f"SFT of the {args.size_b} model ({args.sft_steps} steps) -> {final}", flush=True)
        run_logged([lightrft_exe(), "sft", *overrides], sft_dir.with_suffix(".log"), args)
    return final, train


# ---------------------------------------------------------------------- cases
def default_lightrft_best() -> list[str]:
    """``PACKED_BEST``, with ``VLLM_BEST`` where the ``vllm`` module is installed."""
    if importlib.util.find_spec("vllm") is None:
        print("vllm is not installed: b-best runs LightRFT's hf engine", flush=True)
        return list(PACKED_BEST)
    return [*PACKED_BEST, *VLLM_BEST]


@dataclass
class Case:
    """One comparison: the shared work and each side's speed-only settings."""

    name: str
    model_label: str
    model: Path
    train_path: Path
    prompts: int
    samples: int
    max_new_tokens: int
    max_prompt_length: int
    precision: str
    warmup: int
    steps: int
    repeats: int
    lightrft: list[str] = field(default_factory=list)
    trl_micro_batch: int = 0
    trl_gradient_checkpointing: bool = False
    trl: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.prompts * self.samples


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` value as JSON when it parses (numbers, true/false, null), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` as a dict of parsed values."""
    pairs = [item.split("=", 1) for item in items]
    bad = [item for item, pair in zip(items, pairs, strict=True) if len(pair) != 2]
    if bad:
        raise SystemExit(f"expected KEY=VALUE, got {bad}")
    return {key.strip(): parse_value(value) for key, value in pairs}


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    if any(c.startswith("a-") for c in args.cases):
        model, train = prepare_a(args.work_dir, args.seed)
        for precision in ("fp32", "bf16"):
            if f"a-{precision}" not in args.cases:
                continue
            cases.append(
                Case(
                    f"a-{precision}", "5m", model, train, 16, 8, 8, 32, precision,
                    args.warmup_a, args.steps_a, args.repeats_a,
                    lightrft=["trainer.micro_batch_size=128", "engine.max_batch_size=128"],
                    trl_micro_batch=128,
                )
            )  # fmt: skip
    if any(c.startswith("b-") for c in args.cases):
        model, train = prepare_b(args.work_dir, args)
        shape = (args.prompts_b, args.samples_b, args.max_new_tokens_b, 64, "fp32")
        rows = args.prompts_b * args.samples_b
        label = f"{args.size_b} after {args.sft_steps} SFT steps"
        if "b-defaults" in args.cases:
            cases.append(
                Case("b-defaults", label, model, train, *shape, args.warmup_b, args.steps_b,
                     args.repeats_b, trl_micro_batch=8, trl_gradient_checkpointing=True)
            )  # fmt: skip
        if "b-best" in args.cases:
            trl_values = parse_overrides(args.trl_best or DEFAULT_TRL_BEST)
            micro = trl_values.pop("per_device_train_batch_size", rows)
            checkpointing = trl_values.pop("gradient_checkpointing", False)
            cases.append(
                Case("b-best", label, model, train, *shape, args.warmup_b, args.steps_b,
                     args.repeats_b, lightrft=args.lightrft_best or default_lightrft_best(),
                     trl_micro_batch=micro, trl_gradient_checkpointing=checkpointing,
                     trl=trl_values)
            )  # fmt: skip
    return cases


# ---------------------------------------------------------------------- running
def lightrft_exe() -> str:
    return str(Path(sys.executable).parent / "lightrft")


#: ``lightrft`` whose timers read the process's CPU time (every timer of the training loop
#: reads ``time.perf_counter`` when it runs).
CPU_CLOCK_LIGHTRFT = (
    "import sys, time; time.perf_counter = time.process_time; "
    "from lightrft_cli.main import main; sys.argv[0] = 'lightrft'; sys.exit(main())"
)


def lightrft_command(args: argparse.Namespace) -> list[str]:
    """The ``lightrft`` command, on the clock that ``--clock`` asks for."""
    if args.clock == "cpu":
        return [sys.executable, "-c", CPU_CLOCK_LIGHTRFT]
    return [lightrft_exe()]


def run_env(args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_logged(command: list[str], log: Path, args: argparse.Namespace) -> float:
    """Run ``command`` with its output in ``log``; on failure show the log's tail. Returns
    the CPU seconds the process used (on a loaded machine, with one thread, about the wall
    time it would take alone)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cpu_before = children_cpu_seconds()
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=run_env(args), cwd=ROOT
        ).returncode
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-30:])
        raise SystemExit(f"failed ({code}): {' '.join(command)}\n--- {log} ---\n{tail}")
    return children_cpu_seconds() - cpu_before


def lightrft_overrides(case: Case, out: Path, seed: int) -> list[str]:
    """Every setting that defines the work, then the case's speed settings."""
    return [
        f"run.output_dir={out}",
        f"run.seed={seed}",
        f"data.train_path={case.train_path}",
        "data.input_key=prompt",
        "data.label_key=answer",
        "data.apply_chat_template=false",
        f"data.max_prompt_length={case.max_prompt_length}",
        "model.name=language",
        f"model.path={case.model}",
        "strategy.name=local",
        f"strategy.precision={case.precision}",
        "engine.name=hf",
        f"engine.n_samples_per_prompt={case.samples}",
        f"engine.max_new_tokens={case.max_new_tokens}",
        "engine.temperature=1.0",
        "algorithm.name=grpo",
        "algorithm.kl_coef=0.0",
        "algorithm.loss_aggregation=token-mean",
        "algorithm.scale_rewards_by_std=true",
        "reward.name=math",
        f"trainer.max_steps={case.warmup + case.steps}",
        f"trainer.prompts_per_step={case.prompts}",
        "trainer.epochs=1",
        f"trainer.learning_rate={LEARNING_RATE}",
        "trainer.lr_scheduler=constant",
        "trainer.max_grad_norm=1.0",
        "trainer.eval_every=0",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *case.lightrft,
    ]


def run_lightrft(case: Case, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    command = [*lightrft_command(args), "train", *lightrft_overrides(case, out, args.seed)]
    cpu_seconds = run_logged(command, out.with_suffix(".log"), args)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [
        {
            "seconds": r["time/step"],
            "generate": r["time/generate"],
            "score": r["time/reward"] + r["time/logprobs"],
            "train": r["time/train"],
            "generated_tokens": r["response_length"] * r["samples"],
            "truncated": r["response_truncated"],
            "reward": r["reward/mean"],
        }
        for r in records
    ]
    return {"steps": steps[case.warmup :], "cpu_seconds": cpu_seconds}


def run_trl(case: Case, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {
        "output_dir": str(out),
        "device": "cpu",
        "clock": args.clock,
        "seed": args.seed,
        "warmup": case.warmup,
        "steps": case.steps,
        "prompts_per_step": case.prompts,
        "samples": case.samples,
        "micro_batch_size": case.trl_micro_batch,
        "max_new_tokens": case.max_new_tokens,
        "learning_rate": LEARNING_RATE,
        "precision": case.precision,
        "gradient_checkpointing": case.trl_gradient_checkpointing,
        "model_path": str(case.model),
        "train_path": str(case.train_path),
        "overrides": case.trl,
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    command = [str(venv_python(args.venv)), str(TRL_RUNNER), str(out / "spec.json")]
    cpu_seconds = run_logged([*command, str(out / "result.json")], out.with_suffix(".log"), args)
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    result["cpu_seconds"] = cpu_seconds
    result["steps"] = result["steps"][case.warmup :]
    return result


def median_of(run: dict[str, Any], key: str) -> float:
    return statistics.median(step[key] for step in run["steps"])


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """``repeats`` pairs, TRL then LightRFT; per run the median of its measured steps."""
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "lightrft": []}
    for repeat in range(case.repeats):
        for side, runner in (("trl", run_trl), ("lightrft", run_lightrft)):
            started = time.perf_counter()
            out = args.work_dir / "runs" / f"{case.name}-{side}-{repeat}"
            result = runner(case, out, args)
            result["median_s"] = median_of(result, "seconds")
            result["phases"] = {phase: median_of(result, phase) for phase in PHASES}
            result["generated_per_step"] = median_of(result, "generated_tokens")
            runs[side].append(result)
            phases = " / ".join(f"{result['phases'][phase]:.3f}" for phase in PHASES)
            print(
                f"  {case.name} {side:8s} run {repeat + 1}/{case.repeats}: "
                f"{result['median_s']:.3f} s/step (median of {len(result['steps'])}; "
                f"{' / '.join(PHASES)} {phases}), "
                f"{result['generated_per_step']:.0f} generated tok/step, "
                f"process {time.perf_counter() - started:.0f} s ({result['cpu_seconds']:.0f} "
                "CPU s)",
                flush=True,
            )
    trl_s = statistics.median(r["median_s"] for r in runs["trl"])
    lrft_s = statistics.median(r["median_s"] for r in runs["lightrft"])
    pairs = [
        t["median_s"] / lr["median_s"] for t, lr in zip(runs["trl"], runs["lightrft"], strict=True)
    ]
    trl_tokens = statistics.median(r["generated_per_step"] for r in runs["trl"])
    lrft_tokens = statistics.median(r["generated_per_step"] for r in runs["lightrft"])
    return {
        "case": case.name,
        "trl_s": trl_s,
        "lightrft_s": lrft_s,
        "speedup": trl_s / lrft_s,
        "pair_speedups": pairs,
        "phases": {
            side: {
                phase: statistics.median(r["phases"][phase] for r in side_runs) for phase in PHASES
            }
            for side, side_runs in runs.items()
        },
        "trl_generated": trl_tokens,
        "lightrft_generated": lrft_tokens,
        # per generated token: the sides' samples differ, so their lengths do by chance
        "token_rate_ratio": (lrft_tokens / lrft_s) / (trl_tokens / trl_s),
        "trl_settings": runs["trl"][0]["settings"],
        "lightrft_overrides": case.lightrft,
        "runs": runs,
    }


# ---------------------------------------------------------------------- report
def settings_table(cases: list[Case]) -> str:
    lines = [
        "| case | model | prompts x samples | new tokens | precision | LightRFT speed settings "
        "| TRL speed settings |",
        "|---|---|---|--:|---|---|---|",
    ]
    for c in cases:
        trl = [f"per_device_train_batch_size={c.trl_micro_batch}"]
        trl.append(f"gradient_accumulation_steps={c.rows // c.trl_micro_batch}")
        trl.append(f"gradient_checkpointing={c.trl_gradient_checkpointing}")
        trl += [f"{k}={v}" for k, v in c.trl.items()]
        lines.append(
            f"| {c.name} | {c.model_label} | {c.prompts} x {c.samples} | {c.max_new_tokens} "
            f"| {c.precision} | {' '.join(c.lightrft) or '(defaults)'} | {' '.join(trl)} |"
        )
    return "\n".join(lines)


def results_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | TRL s/step | LightRFT s/step | LightRFT speed-up (TRL / LightRFT) "
        "| per pair | generated tok/step TRL / LightRFT | generated tok/s ratio |",
        "|---|--:|--:|--:|---|---|--:|",
    ]
    for r in results:
        pairs = ", ".join(f"{p:.2f}" for p in r["pair_speedups"])
        lines.append(
            f"| {r['case']} | {r['trl_s']:.3f} | {r['lightrft_s']:.3f} | "
            f"**{r['speedup']:.2f}x** | {pairs} | "
            f"{r['trl_generated']:.0f} / {r['lightrft_generated']:.0f} | "
            f"{r['token_rate_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def phases_table(results: list[dict[str, Any]]) -> str:
    """Seconds per phase of each side (the median over the runs of each run's median)."""
    lines = [
        "| case | side | step s | generate s | score s | train s |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in results:
        for side, label, step in (("trl", "TRL", "trl_s"), ("lightrft", "LightRFT", "lightrft_s")):
            phases = " | ".join(f"{r['phases'][side][phase]:.3f}" for phase in PHASES)
            lines.append(f"| {r['case']} | {label} | {r[step]:.3f} | {phases} |")
    return "\n".join(lines)


COMMON_SETTINGS = """\
Same on both sides: GRPO, one rollout = one optimizer step trained once (TRL
num_iterations=1, steps_per_generation = gradient_accumulation_steps, so neither side
recomputes old log-probs), no reference model (beta / kl_coef 0), clip 0.2/0.2, token-mean
loss (TRL loss_type=dapo), group rewards scaled by their std (TRL scale_rewards=group),
temperature 1, no top-p/top-k, AdamW lr 1e-6 constant, no weight decay, gradient clipping
1.0, fp32 weights (bf16 = autocast on both: TRL bf16=True, LightRFT strategy.precision=bf16),
no chat template, reward 1 when the response's last integer equals the answer (TRL: a
function in benchmarks/peers/trl_grpo.py; LightRFT: reward.name=math), torch and
transformers of the same versions. TRL defaults changed: gradient_checkpointing (True) and
bf16 (True) as the table says, lr_scheduler_type linear -> constant; fused AdamW on both
(TRL's default adamw_torch_fused, LightRFT's trainer.adamw_implementation=auto)."""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    ensure_peer_venv(args.venv, dry_run=args.install_dry_run)
    if args.install_dry_run:
        return
    versions = peer_versions(args.venv)
    print(f"peer venv {args.venv}: {versions}", flush=True)
    cases = build_cases(args)
    if args.prepare_only:
        return
    print("\n" + settings_table(cases) + "\n\n" + COMMON_SETTINGS + "\n", flush=True)
    results = []
    for case in cases:
        print(f"{case.name}: {case.repeats} x (TRL, LightRFT)", flush=True)
        results.append(run_case(case, args))
    print("\n" + results_table(results))
    print("\n" + phases_table(results))
    print(
        "\nspeed-up: median TRL s/step / median LightRFT s/step over the runs (each run: the "
        "median of its measured steps); per pair: the same ratio for each TRL/LightRFT pair; "
        "tok/s ratio: LightRFT's generated tokens per second of step over TRL's. Phases: "
        "generate = sampling (TRL GRPOTrainer._generate, LightRFT time/generate); score = "
        "rewards, advantages and log-prob passes (TRL: the rest of "
        "_generate_and_score_completions; LightRFT time/reward + time/logprobs); train = "
        "TRL the step's remainder, LightRFT time/train (loss, backward, optimizer)."
    )
    if args.output_json:
        payload = {"versions": versions, "args": vars(args), "results": results}
        args.output_json.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
