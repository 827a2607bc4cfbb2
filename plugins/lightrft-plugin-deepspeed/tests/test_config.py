"""The DeepSpeed config generated from the typed options, the JSON escape hatch, and the
cheap, deepspeed-free plugin import (no process group, no torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightrft_plugin_deepspeed.ds_config import (
    RESERVED_KEYS,
    build_deepspeed_config,
    deep_merge,
    inference_config,
    load_user_config,
    offloads,
    resolve_config,
)
from lightrft_plugin_deepspeed.options import DeepSpeedOptions
from lightrft_plugin_deepspeed.runtime import INSTALL_HINT, import_deepspeed, prepare_environment


def write_json(tmp_path: Path, data: object, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------------- generated config
def test_default_config_lets_the_loop_own_accumulation_and_clipping() -> None:
    config = build_deepspeed_config(DeepSpeedOptions())
    assert config["managed_gradient_accumulation"] is False
    assert config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.0
    assert config["zero_optimization"]["stage"] == 2
    assert config["bf16"] == {"enabled": False}
    assert not offloads(config, "offload_optimizer")
    assert "optimizer" not in config and "scheduler" not in config


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_is_passed_through(stage: int) -> None:
    config = build_deepspeed_config(DeepSpeedOptions(zero_stage=stage))
    assert config["zero_optimization"]["stage"] == stage
    assert ("offload_param" in config["zero_optimization"]) == (stage == 3)


def test_offload_and_bf16() -> None:
    options = DeepSpeedOptions(
        zero_stage=3, offload_optimizer=True, offload_param=True, precision="bf16"
    )
    config = build_deepspeed_config(options, pin_memory=True)
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert offloads(config, "offload_optimizer") and offloads(config, "offload_param")
    assert config["bf16"] == {"enabled": True}
    assert config["zero_force_ds_cpu_optimizer"] is False  # torch AdamW may run offloaded


def test_inference_config_keeps_parameter_sharding_only() -> None:
    options = DeepSpeedOptions(
        zero_stage=3, offload_optimizer=True, offload_param=True, precision="bf16"
    )
    config = inference_config(build_deepspeed_config(options))
    assert config["zero_optimization"]["stage"] == 3
    assert offloads(config, "offload_param")
    assert "offload_optimizer" not in config["zero_optimization"]
    assert config["bf16"] == {"enabled": True}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"zero_stage": 0}, "zero_stage must be 1, 2 or 3"),
        ({"zero_stage": 4}, "zero_stage must be 1, 2 or 3"),
        ({"zero_stage": 2, "offload_param": True}, "offload_param needs zero_stage 3"),
        ({"backend": "nccl", "device": "cpu"}, "needs CUDA"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"precision": "fp16"}, "precision must be"),
        ({"optimizer": "sgd"}, "optimizer must be"),
    ],
)
def test_invalid_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeepSpeedOptions(**options)


# ---------------------------------------------------------------------- JSON escape hatch
def test_deep_merge_merges_mappings_and_replaces_other_values() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    override = {"a": {"c": [3], "e": 2}, "f": {"g": 1}}
    merged = deep_merge(base, override)
    assert merged == {"a": {"b": 1, "c": [3], "e": 2}, "d": 1, "f": {"g": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}, "inputs stay untouched"


def test_user_file_is_merged_over_the_generated_config(tmp_path: Path) -> None:
    user = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": True},
        "wall_clock_breakdown": True,
    }
    options = DeepSpeedOptions(zero_stage=2, config_file=str(write_json(tmp_path, user)))
    config = resolve_config(options)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["overlap_comm"] is False, "generated keys the file leaves alone stay"
    assert config["bf16"] == {"enabled": True}
    assert config["wall_clock_breakdown"] is True
    assert config["managed_gradient_accumulation"] is False


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_user_file_may_not_set_keys_the_strategy_owns(tmp_path: Path, key: str) -> None:
    path = write_json(tmp_path, {key: 1})
    with pytest.raises(ValueError, match=f"'{key}'") as err:
        load_user_config(path)
    assert str(path) in str(err.value)


def test_user_file_errors_name_the_file_and_position(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="strategy.config_file"):
        load_user_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "bf16": {"enabled": true,}\n}')
    with pytest.raises(ValueError, match="line 2 column"):
        load_user_config(broken)
    with pytest.raises(ValueError, match="JSON object"):
        load_user_config(write_json(tmp_path, [1, 2], "list.json"))


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"zero_optimization": {"stage": 0}}, "supports ZeRO stages 1, 2 and 3"),
        ({"zero_optimization": {"stage": 1, "overlap_comm": True}}, "overlap_comm needs"),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "both fp16 and bf16"),
    ],
)
def test_merged_config_is_checked(tmp_path: Path, user: dict, message: str) -> None:
    options = DeepSpeedOptions(config_file=str(write_json(tmp_path, user)))
    with pytest.raises(ValueError, match=message):
        resolve_config(options)


# ---------------------------------------------------------------------- importing
def test_entry_point_and_registration_do_not_import_deepspeed() -> None:
    code = (
        "import sys\n"
        "import lightrft_plugin_deepspeed.plugin\n"
        "assert 'deepspeed' not in sys.modules and 'torch' not in sys.modules\n"
        "from lightrft_core.plugins import PluginManager\n"
        "import lightrft_plugin_deepspeed.plugin as p\n"
        "pm = PluginManager(autoload=False)\n"
        "pm.register(p, name='deepspeed')\n"
        "print(pm.get_strategy('deepspeed').__name__)\n"
        "assert 'deepspeed' not in sys.modules, 'registering must not import deepspeed'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DeepSpeedStrategy"


def isolate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables the functions under test set come back as they were after the test."""
    for key in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "PATH"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # recorded, then restored
        if key != "PATH":
            monkeypatch.delenv(key)


def test_missing_deepspeed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # "import deepspeed" now fails
    with pytest.raises(ImportError, match="pip install") as err:
        import_deepspeed(device_type="cpu")
    assert str(err.value) == INSTALL_HINT


def test_environment_for_deepspeed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_environment(monkeypatch)
    cache = tmp_path / "ext"
    prepare_environment(device_type="cpu", extensions_dir=str(cache))
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(cache.resolve()) and cache.is_dir()
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(RuntimeError, match="DS_ACCELERATOR=cuda"):
        prepare_environment(device_type="cpu", extensions_dir=None)
