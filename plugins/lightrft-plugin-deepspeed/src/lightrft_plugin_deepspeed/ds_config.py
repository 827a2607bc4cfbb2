"""The DeepSpeed config dict, generated from ``DeepSpeedOptions`` plus an optional user JSON.

The generated config encodes how the loop drives DeepSpeed (``StrategyBase`` contract):

* ``managed_gradient_accumulation: false`` and ``gradient_accumulation_steps: 1`` -- the
  loop decides how many micro-batches make an optimizer step; ``backward`` only
  accumulates, ``optimizer_step`` is the boundary that reduces, clips and steps. The loss
  is already scaled for the whole optimizer batch (``LossScale``), so DeepSpeed must never
  divide it by an accumulation count.
* ``gradient_clipping`` is set per step from the loop's ``max_grad_norm``.
* the optimizer and the learning-rate schedule are the loop's own objects.

A user file may change anything else (bucket sizes, prefetching, offload details ...);
keys that would break the contract above are refused with a message saying what to set
instead.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .options import DeepSpeedOptions

#: Keys the strategy owns, with what to set instead. A user file may not set them.
RESERVED_KEYS: dict[str, str] = {
    "optimizer": "the loop builds the optimizer: set strategy.optimizer and trainer.learning_rate",
    "scheduler": "the loop builds the schedule: set trainer.lr_scheduler and trainer.warmup_steps",
    "gradient_accumulation_steps": "the loop accumulates micro-batches: set "
    "trainer.micro_batch_size and trainer.optimizer_batch_size",
    "managed_gradient_accumulation": "optimizer_step() is the accumulation boundary",
    "train_batch_size": "batch sizes come from trainer.*",
    "train_micro_batch_size_per_gpu": "batch sizes come from trainer.*",
    "gradient_clipping": "set trainer.max_grad_norm",
}
#: Printing every step would flood the log; the loop logs its own metrics.
NEVER_PRINT = 2**31 - 1


def offload_section(enabled: bool, *, pin_memory: bool) -> dict[str, Any]:
    if not enabled:
        return {"device": "none"}
    return {"device": "cpu", "pin_memory": pin_memory}


def build_deepspeed_config(
    options: DeepSpeedOptions, *, pin_memory: bool = False
) -> dict[str, Any]:
    """The DeepSpeed config of the training engine for ``options`` (before the user file).

    ``pin_memory``: pin offloaded CPU buffers (only meaningful with CUDA devices).
    """
    zero: dict[str, Any] = {
        "stage": options.zero_stage,
        "overlap_comm": options.overlap_comm,
        "contiguous_gradients": True,
        "offload_optimizer": offload_section(options.offload_optimizer, pin_memory=pin_memory),
    }
    if options.zero_stage == 3:
        zero["offload_param"] = offload_section(options.offload_param, pin_memory=pin_memory)
        # the strategy gathers the weights itself for export_hf
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0,
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": options.precision == "bf16"},
        "zero_optimization": zero,
        # the loop's torch optimizer is welcome, also with optimizer offload
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def inference_config(train_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a model prepared without optimizer (reference, reward models) under
    ZeRO-3: parameters partitioned (and offloaded when the training engine offloads them),
    no optimizer sections."""
    zero = train_config.get("zero_optimization", {})
    inference_zero = {
        key: copy.deepcopy(value)
        for key, value in zero.items()
        if key not in ("offload_optimizer", "overlap_comm", "contiguous_gradients")
    }
    inference_zero["stage"] = 3
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
        "bf16": copy.deepcopy(train_config.get("bf16", {"enabled": False})),
        "zero_optimization": inference_zero,
    }


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: nested mappings merge key by key, any other
    value (lists included) is replaced. Neither input is modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_user_config(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON file for ``strategy.config_file`` and refuse reserved keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"strategy.config_file: no file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"strategy.config_file {path}, line {err.lineno} column {err.colno}: "
            f"not valid JSON ({err.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"strategy.config_file {path}: expected a JSON object at the top level")
    problems = [f"{key!r} ({RESERVED_KEYS[key]})" for key in data if key in RESERVED_KEYS]
    if problems:
        raise ValueError(
            f"strategy.config_file {path} sets key(s) the deepspeed strategy owns: "
            + "; ".join(problems)
        )
    return data


def resolve_config(options: DeepSpeedOptions, *, pin_memory: bool = False) -> dict[str, Any]:
    """The final training config: generated from ``options``, then the user file merged
    over it. Checks that the result still describes a supported ZeRO setup."""
    config = build_deepspeed_config(options, pin_memory=pin_memory)
    if options.config_file:
        config = deep_merge(config, load_user_config(options.config_file))
    stage = zero_stage_of(config)
    if stage not in (1, 2, 3):
        raise ValueError(
            f"the DeepSpeed config asks for zero_optimization.stage {stage!r}; "
            "the deepspeed strategy supports ZeRO stages 1, 2 and 3"
        )
    if stage == 1 and config["zero_optimization"].get("overlap_comm"):
        raise ValueError(
            "overlap_comm needs ZeRO stage 2 or 3 (DeepSpeed reduces stage-1 gradients only "
            "at the optimizer step); set overlap_comm: false"
        )
    if config.get("fp16", {}).get("enabled") and config.get("bf16", {}).get("enabled"):
        raise ValueError("the DeepSpeed config enables both fp16 and bf16; choose one")
    return config


def zero_stage_of(config: Mapping[str, Any]) -> int:
    return config.get("zero_optimization", {}).get("stage", 0)


def offloads(config: Mapping[str, Any], section: str) -> bool:
    """Whether ``zero_optimization.<section>`` (offload_optimizer / offload_param) is on."""
    value = config.get("zero_optimization", {}).get(section) or {}
    return value.get("device", "none") not in ("none", None)
