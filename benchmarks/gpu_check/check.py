"""The one-shot GPU check behind ``benchmarks/gpu_check.sh`` (see its header for use).

Subcommands:

- ``prepare`` (here, in ``.venv``, with the package registry): wheels of lightrft-core and
  the plugins the check uses, plus the pure-Python wheels of their dependencies that a
  torch + transformers + peft image may lack, into one folder that travels to the GPU
  machine.
- ``install`` (there, no network): installs those wheels with ``--no-index --no-deps``,
  skipping dependencies the image already has; the deepspeed plugin only where
  ``deepspeed`` is importable.
- ``run`` (there): the environment (card, bf16, flash-attn, deepspeed, a measured bf16
  matmul), a tiny Qwen2 model built locally, then GRPO steps through ``lightrft train`` for
  each case (local with sdpa / flash-attention, fsdp and deepspeed ZeRO-2 on one rank under
  ``torchrun``; the ``hf`` engine, bf16): step time, generated tokens/s and the train phase's
  MFU against the card's bf16 peak. Each case runs in its own process with a time limit and
  reports ok / failed / missing with the reason; a markdown and a JSON summary are written.

Only the standard library is imported at module level: ``install`` runs before LightRFT is
there, and ``run`` imports torch where it needs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Plugins the check needs; ``deepspeed`` joins where the library is importable.
PLUGINS = ("lightrft-plugin-grpo", "lightrft-plugin-fsdp", "lightrft-plugin-deepspeed")
#: Provided by the image (and too large or platform-bound to carry): never installed here.
IMAGE_PACKAGES = {
    "torch", "transformers", "peft", "numpy", "tokenizers", "safetensors", "pyyaml",
    "huggingface-hub", "tensorboard", "matplotlib", "deepspeed", "triton", "sympy",
    "filelock", "fsspec", "jinja2", "networkx", "regex", "requests", "packaging", "psutil",
}  # fmt: skip

#: Python versions a GPU image may have: platform wheels are fetched for each.
GPU_PYTHONS = ("3.10", "3.11", "3.12")
#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendor's data sheets, matched
#: against ``torch.cuda.get_device_name()`` in this order (first match wins).
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 (the name reads "NVIDIA H100 80GB HBM3")
    ("A100", 312.0),  # SXM4 and PCIe alike
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak of a card from its name, or None when unknown."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# ---------------------------------------------------------------------- prepare
def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(dist: str) -> list[str]:
    """Names of ``dist``'s requirements on this platform (extras left out)."""
    from packaging.requirements import Requirement

    names = []
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(normalized(req.name))
    return names


def dependency_closure(roots: list[str]) -> dict[str, str]:
    """Installed name -> version of every dependency of ``roots``, minus the image's."""
    seen: dict[str, str] = {}
    todo = [name for root in roots for name in requirement_names(root)]
    while todo:
        name = todo.pop()
        if name in seen or name in IMAGE_PACKAGES or name.startswith(("lightrft", "nvidia-")):
            continue
        seen[name] = metadata.version(name)
        todo += requirement_names(name)
    return dict(sorted(seen.items()))


def prepare(wheels: Path) -> None:
    """Our wheels (built from the working tree) and pure-Python dependency wheels."""
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    sources = [str(ROOT), *(str(ROOT / "plugins" / name) for name in PLUGINS)]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), *sources]
    subprocess.run(build, check=True)
    deps = dependency_closure(["lightrft-core", *PLUGINS])
    pins = [f"{name}=={version}" for name, version in deps.items()]
    fetch = [*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *pins]
    subprocess.run(fetch, check=True)
    platform_bound = [w for w in wheels.glob("*.whl") if not w.name.endswith("-none-any.whl")]
    for wheel in platform_bound:  # the GPU image's python may be another version
        wheel.unlink()
        pin = "{}=={}".format(*wheel.name.split("-")[:2])
        for version in GPU_PYTHONS:
            target = ["--python-version", version, "--platform", "manylinux2014_x86_64"]
            subprocess.run([*fetch[: -len(pins)], *target, pin], check=True)
    total = sum(w.stat().st_size for w in wheels.glob("*.whl")) / 2**20
    print(f"{len(list(wheels.glob('*.whl')))} wheels, {total:.1f} MiB in {wheels}")


# ---------------------------------------------------------------------- install
def wheel_dist(wheel: Path) -> str:
    return normalized(wheel.name.split("-", 1)[0])


def installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def install(wheels: Path) -> None:
    """Our wheels always; a dependency's only where the image lacks that distribution (and
    of a platform-bound one the file that fits this interpreter)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    supported = set(sys_tags())
    chosen = []
    for wheel in sorted(wheels.glob("*.whl")):
        dist = wheel_dist(wheel)
        if not supported & set(parse_wheel_filename(wheel.name)[3]):
            continue
        if dist == "lightrft-plugin-deepspeed" and not has_deepspeed:
            print("deepspeed is not importable: lightrft-plugin-deepspeed left out")
        elif dist.startswith("lightrft") or not installed(dist):
            chosen.append(str(wheel))
    print("installing:", " ".join(Path(w).name for w in chosen))
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *chosen]
    subprocess.run(command, check=True)


# ---------------------------------------------------------------------- run: environment
def measure_matmul_tflops(device: str, dtype_name: str) -> float:
    """Best of a few ``n x n`` products (n = 8192 on CUDA, 1024 on CPU), in TFLOP/s."""
    import torch

    dtype = getattr(torch, dtype_name)
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best / 1e12


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    for dist in ("transformers", "peft", "flash-attn", "deepspeed", "lightrft-core"):
        env[dist] = metadata.version(dist) if installed(dist) else None
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["bf16_peak_tflops"] = bf16_peak_tflops(env["device_name"])
    else:
        env["device_name"] = "cpu"
        env["bf16_peak_tflops"] = None
    env["matmul_bf16_tflops"] = measure_matmul_tflops(device, "bfloat16")
    return env


# ---------------------------------------------------------------------- run: cases
@dataclass
class Shape:
    """The model and the rollout of a run."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    prompts: int
    samples: int
    max_new_tokens: int
    micro_batch: int
    steps: int  # measured steps, after one warm-up step


SHAPES = {
    # ~0.36 B parameters (head_dim 128): big enough for the tensor cores to matter
    "cuda": Shape(2048, 5632, 8, 16, 4, 32, 8, 128, 64, 2),
    "cpu": Shape(64, 128, 2, 1, 1, 2, 4, 8, 8, 1),  # exercises the script's logic only
}


@dataclass
class Case:
    name: str
    strategy: str
    attention: str
    launcher: str  # "python" or "torchrun"
    model_dtype: str = "float32"  # weights; every case trains with bf16 autocast on top
    needs: str | None = None  # module that must be importable
    overrides: list[str] = field(default_factory=list)


CASES = (
    Case("local-sdpa", "local", "sdpa", "python"),
    Case("local-sdpa-bf16w", "local", "sdpa", "python", model_dtype="bfloat16"),
    Case("local-flash-bf16w", "local", "flash_attention_2", "python", model_dtype="bfloat16",
         needs="flash_attn"),
    Case("fsdp-1rank", "fsdp", "sdpa", "torchrun"),
    Case("deepspeed-zero2-1rank", "deepspeed", "sdpa", "torchrun", needs="deepspeed",
         overrides=["strategy.zero_stage=2"]),
)  # fmt: skip
FLASH_FALLBACK = "not the requested flash_attention_2"

PROMPT_TOKENS = 6  # every prompt of the arithmetic task below is "d+d-d=": 6 bytes


def build_inputs(work: Path, shape: Shape, seed: int) -> dict[str, Any]:
    """A tiny Qwen2 model of ``shape`` and the demo's arithmetic prompts."""
    from lightrft_core.demo.task import ArithmeticTask, write_task_data
    from lightrft_core.models.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint(
        work / "model",
        "5m",
        seed=seed,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
    )
    data = write_task_data(work / "data", ArithmeticTask(), sft=0, rl=1024, held_out=8, seed=seed)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    params = parameter_count(config)
    return {"model": model, "train": data["train"], "params": params}


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a Qwen2 config with tied embeddings (counted once)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    attention = h * h * 2 + h * kv * 2 + h + kv * 2  # q, o; k, v; q/k/v biases
    per_layer = attention + 3 * h * i + 2 * h  # MLP; two RMSNorms
    return config["vocab_size"] * h + layers * per_layer + h


def case_command(case: Case, inputs: dict[str, Any], shape: Shape, out: Path) -> list[str]:
    overrides = [
        f"run.output_dir={out}",
        "run.seed=0",
        f"data.train_path={inputs['train']}",
        "data.apply_chat_template=false",
        "data.max_prompt_length=16",
        f"model.path={inputs['model']}",
        f"model.attn_implementation={case.attention}",
        f"model.dtype={case.model_dtype}",
        f"strategy.name={case.strategy}",
        "strategy.precision=bf16",
        "engine.name=hf",
        f"engine.n_samples_per_prompt={shape.samples}",
        f"engine.max_new_tokens={shape.max_new_tokens}",
        f"engine.max_batch_size={shape.prompts * shape.samples}",
        "algorithm.name=grpo",
        "reward.name=math",
        f"trainer.max_steps={shape.steps + 1}",
        f"trainer.prompts_per_step={shape.prompts}",
        f"trainer.micro_batch_size={shape.micro_batch}",
        "trainer.eval_every=0",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *case.overrides,
    ]
    if case.launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        return [*launch, "--nproc-per-node", "1", "-m", "lightrft_cli", "train", *overrides]
    return [sys.executable, "-m", "lightrft_cli", "train", *overrides]


def summarize_steps(records: list[dict[str, Any]], params: int, peak: float | None) -> dict:
    """Means over the measured steps (the first, warm-up step left out)."""
    steps = records[1:] or records

    def mean(key: str) -> float:
        return sum(r[key] for r in steps) / len(steps)

    response = mean("response_length")
    rows = mean("samples")
    train_tokens = rows * (PROMPT_TOKENS + response)
    train_tflops = 6 * params * train_tokens / mean("time/train") / 1e12
    return {
        "step_s": mean("time/step"),
        "generate_s": mean("time/generate"),
        "logprobs_s": mean("time/logprobs"),
        "train_s": mean("time/train"),
        "generated_tokens_per_s": rows * response / mean("time/generate"),
        "train_tokens_per_s": train_tokens / mean("time/train"),
        "train_tflops": train_tflops,
        "train_mfu": train_tflops / peak if peak else None,
        "measured_steps": len(steps),
    }


def last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:)", line):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def run_case(case: Case, inputs: dict[str, Any], shape: Shape, ctx: dict[str, Any]) -> dict:
    result: dict[str, Any] = {"case": case.name, "strategy": case.strategy}
    result["attention"] = case.attention
    if time.monotonic() > ctx["deadline"]:
        return {**result, "status": "skipped", "reason": "the check's time budget is spent"}
    if case.needs and importlib.util.find_spec(case.needs) is None:
        return {**result, "status": "missing", "reason": f"{case.needs} is not importable"}
    out = ctx["work"] / case.name
    command = case_command(case, inputs, shape, out)
    if ctx["dry_run"]:
        return {**result, "status": "planned", "reason": " ".join(command)}
    log = ctx["work"] / f"{case.name}.log"
    started = time.perf_counter()
    try:
        with log.open("w") as handle:
            code = subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=min(ctx["case_timeout"], max(1.0, ctx["deadline"] - time.monotonic())),
                env=ctx["env"],
            ).returncode
    except subprocess.TimeoutExpired:
        code, reason = None, f"timed out after {time.perf_counter() - started:.0f} s"
    result["wall_s"] = time.perf_counter() - started
    ctx["logs"].append(log)
    if code is None:
        return {**result, "status": "failed", "reason": reason}
    if code != 0:
        return {**result, "status": "failed", "reason": f"exit {code}: {last_error(log)}"}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    summary = summarize_steps(records, inputs["params"], ctx["peak"])
    note = "fell back to sdpa" if FLASH_FALLBACK in log.read_text(errors="replace") else ""
    return {**result, "status": "ok", "note": note, **summary}


# ---------------------------------------------------------------------- run: report
def markdown(env: dict[str, Any], shape: Shape, params: int, results: list[dict]) -> str:
    peak = env.get("bf16_peak_tflops")
    lines = [
        "# GPU check",
        "",
        f"- device: {env['device_name']} (capability {env.get('capability', '-')}), "
        f"bf16 peak (data sheet): {peak if peak else 'unknown'} TFLOP/s, measured bf16 matmul: "
        f"{env['matmul_bf16_tflops']:.2f} TFLOP/s",
        f"- python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, flash-attn {env['flash-attn'] or 'missing'}, "
        f"deepspeed {env['deepspeed'] or 'missing'}, lightrft-core {env['lightrft-core']}",
        f"- model: Qwen2 {params / 1e6:.2f} M parameters (hidden {shape.hidden}, "
        f"{shape.layers} layers), {shape.prompts} prompts x {shape.samples} samples, "
        f"{shape.max_new_tokens} new tokens, micro-batches of {shape.micro_batch}, bf16 "
        f"autocast (strategy.precision=bf16), engine hf, GRPO; means of {shape.steps} steps "
        "after one warm-up step",
        "- MFU = 6 x parameters x trained tokens / train-phase seconds / bf16 peak",
        "",
        "| case | status | step s | generate s | train s | generated tok/s | train tok/s "
        "| train TFLOP/s | MFU | note |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['status']} | | | | | | | | {r['reason']} |")
            continue
        mfu = f"{r['train_mfu']:.1%}" if r["train_mfu"] is not None else "-"
        lines.append(
            f"| {r['case']} | ok | {r['step_s']:.3f} | {r['generate_s']:.3f} | "
            f"{r['train_s']:.3f} | {r['generated_tokens_per_s']:,.0f} | "
            f"{r['train_tokens_per_s']:,.0f} | {r['train_tflops']:.1f} | {mfu} | "
            f"wall {r['wall_s']:.0f} s {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(
    out: Path, env: dict, shape: Shape, params: int, results: list[dict], logs: list[Path]
) -> None:
    """The markdown and JSON summaries and the logs' tails (rewritten after every case)."""
    (out / "gpu_check.md").write_text(markdown(env, shape, params, results), encoding="utf-8")
    payload = {"environment": env, "shape": asdict(shape), "params": params, "results": results}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    tails = [f"==> {log.name}\n" + "\n".join(log.read_text().splitlines()[-40:]) for log in logs]
    (out / "gpu_check_logs.txt").write_text("\n\n".join(tails), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[device]
    out = Path(os.environ.get("OUT") or ROOT / "build" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "build" / "gpu-check-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = environment(device)
    print(json.dumps(env, indent=1), flush=True)
    inputs = build_inputs(work, shape, seed=0)
    child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # DeepSpeed's JIT-compiled ops (CPU: shm_comm) are cached in the build folder
    child_env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "build" / "torch_extensions"))
    ctx = {
        "deadline": started + args.budget_s,
        "env": child_env,
        "work": work,
        "dry_run": args.dry_run,
        "case_timeout": args.case_timeout,
        "peak": env["bf16_peak_tflops"],
        "logs": [],
    }
    results = []
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        print(f"== {case.name}", flush=True)
        try:
            result = run_case(case, inputs, shape, ctx)
        except Exception as error:  # fail soft: report and go on with the next case
            result = {"case": case.name, "status": "failed", "reason": repr(error)[:300]}
        print(json.dumps(result), flush=True)
        results.append(result)
        write_summary(out, env, shape, inputs["params"], results, ctx["logs"])
    print(markdown(env, shape, inputs["params"], results))
    print(f"summary: {out / 'gpu_check.md'}")
    return 0 if all(r["status"] in ("ok", "missing", "planned") for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("prepare", "install"):
        s = sub.add_parser(name)
        s.add_argument("--wheels", type=Path, default=ROOT / "build" / "gpu-wheels")
    r = sub.add_parser("run")
    r.add_argument("--device", choices=("cuda", "cpu"), default=None, help="Default: cuda if any.")
    r.add_argument("--dry-run", action="store_true", help="Environment and plan, no training.")
    r.add_argument("--cases", nargs="*", default=None, help=f"Some of {[c.name for c in CASES]}.")
    r.add_argument("--case-timeout", type=int, default=90, help="Seconds per case at most.")
    r.add_argument(
        "--budget-s", type=int, default=400, help="Seconds for the whole run; later cases skip."
    )
    args = p.parse_args(argv)
    if args.command == "prepare":
        prepare(args.wheels)
    elif args.command == "install":
        install(args.wheels)
    else:
        return run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
