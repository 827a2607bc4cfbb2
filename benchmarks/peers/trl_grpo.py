"""TRL's ``GRPOTrainer`` on one workload, timed from inside the process.

Runs in the peer virtual environment that ``benchmarks/peers.py`` creates (TRL, the same
torch and transformers as ``.venv``, no LightRFT). Reads a JSON spec (``spec`` below), trains
``warmup + steps`` optimizer steps and writes one JSON file: per step the seconds from
``on_step_begin`` to ``on_step_end`` (generation, reward, loss, backward and optimizer step
all happen between the two), the tokens generated (``completions/mean_length`` x rows;
TRL counts the EOS token) and two phases: ``generate`` (``GRPOTrainer._generate``: sampling
and decoding) and ``rollout`` (``_generate_and_score_completions``: generation, rewards,
advantages and any log-prob pass); the rest of the step is the training. With
``"clock": "cpu"`` in the spec every time is the process's CPU time instead of wall time.

    build/peers-venv/bin/python benchmarks/peers/trl_grpo.py SPEC.json RESULT.json
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

_LAST_INTEGER = re.compile(r"-?\d+")


def last_number_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1 when the last integer of the completion equals the label, else 0 (LightRFT's ``math``
    reward takes the same path for plain-number answers)."""
    rewards = []
    for text, label in zip(completions, answer, strict=True):
        numbers = _LAST_INTEGER.findall(text)
        rewards.append(float(bool(numbers) and int(numbers[-1]) == int(label)))
    return rewards


class StepTimer(TrainerCallback):
    """Seconds per optimizer step, of its phases, and the logged metrics of each step."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.logs: dict[int, dict[str, float]] = {}

    def timed(self, phase: str, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` adding its seconds to ``phase`` of the current step."""

        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.current[phase] = self.current.get(phase, 0.0) + elapsed

        return run

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.current = {}
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self.started)
        self.phases.append(self.current)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "completions/mean_length" in logs:
            self.logs[state.global_step] = dict(logs)


def grpo_config(spec: dict[str, Any]) -> GRPOConfig:
    """The GRPO settings; every TRL default that changes the work is set explicitly."""
    rows = spec["prompts_per_step"] * spec["samples"]
    micro = spec["micro_batch_size"]
    if rows % micro:
        raise ValueError(f"micro_batch_size {micro} must divide the {rows} rows of a step")
    settings: dict[str, Any] = {
        "output_dir": spec["output_dir"],
        "use_cpu": spec["device"] == "cpu",
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": spec["seed"],
        "max_steps": spec["warmup"] + spec["steps"],
        # one rollout of prompts_per_step x samples rows per optimizer step, trained once
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": rows // micro,
        "steps_per_generation": rows // micro,
        "num_generations": spec["samples"],
        "num_iterations": 1,
        "max_completion_length": spec["max_new_tokens"],
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        # the objective: clipped ratio, no reference model, token-mean loss, std-scaled groups
        "beta": 0.0,
        "epsilon": 0.2,
        "loss_type": "dapo",
        "scale_rewards": "group",
        # the optimizer: AdamW, constant learning rate, gradient clipping at 1
        "learning_rate": spec["learning_rate"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        # precision and memory: fp32 weights; bf16 = autocast (mixed precision) like LightRFT
        "bf16": spec["precision"] == "bf16",
        "gradient_checkpointing": spec["gradient_checkpointing"],
        "model_init_kwargs": {"dtype": "float32"},
        "dataloader_num_workers": 0,
    }
    settings.update(spec.get("overrides", {}))
    return GRPOConfig(**settings)


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("clock") == "cpu":  # the timers below read the process's CPU time
        time.perf_counter = time.process_time
    torch.manual_seed(spec["seed"])
    data = load_dataset("json", data_files=spec["train_path"], split="train")
    timer = StepTimer()
    config = grpo_config(spec)
    trainer = GRPOTrainer(
        model=spec["model_path"],
        reward_funcs=last_number_reward,
        args=config,
        train_dataset=data,
        callbacks=[timer],
    )
    # instance attributes shadow the methods: the trainer calls the timed ones
    trainer._generate = timer.timed("generate", trainer._generate)
    trainer._generate_and_score_completions = timer.timed(
        "rollout", trainer._generate_and_score_completions
    )
    trainer.train()
    rows = spec["prompts_per_step"] * spec["samples"]
    steps = []
    timed = zip(timer.seconds, timer.phases, strict=True)
    for index, (seconds, phases) in enumerate(timed, start=1):
        logs = timer.logs.get(index, {})
        rollout = phases.get("rollout", 0.0)
        steps.append(
            {
                "step": index,
                "seconds": seconds,
                "generate": phases.get("generate", 0.0),
                "score": rollout - phases.get("generate", 0.0),
                "train": seconds - rollout,
                "generated_tokens": logs.get("completions/mean_length", float("nan")) * rows,
                "reward": logs.get("reward", float("nan")),
            }
        )
    settings = {k: v for k, v in config.to_dict().items() if k in _REPORTED}
    result = {"steps": steps, "settings": settings, "torch": torch.__version__}
    Path(result_path).write_text(json.dumps(result, indent=1), encoding="utf-8")


#: GRPOConfig fields written to the result (the ones that change the work or its cost).
_REPORTED = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "num_generations",
    "num_iterations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "learning_rate",
    "lr_scheduler_type",
    "weight_decay",
    "max_grad_norm",
    "bf16",
    "gradient_checkpointing",
    "optim",
    "use_vllm",
    "importance_sampling_level",
    "mask_truncated_completions",
)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
