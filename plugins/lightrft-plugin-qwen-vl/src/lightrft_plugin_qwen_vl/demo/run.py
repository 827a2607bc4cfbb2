"""``lightrft demo --task vision``: a tiny Qwen2-VL and the colour task -> SFT warm-up (the
answer's form only) -> GRPO through ``lightrft train``'s code -> held-out accuracy, and the
same model on blank pictures as the control (task.py says why). The flow is the core's
:mod:`lightrft_core.demo.controlled`; this module is the task's part of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lightrft_core.demo.controlled import ControlledDemoPlan, ControlledDemoResult

from ..tiny import Family, build_tiny_qwen_vl
from .task import COLORS, QUESTION, ColorTask, write_task_data

#: The configuration files the demo runs (also shipped as examples/demo_vision_*.yaml).
CONFIG_FILES = {"sft": "vision_sft.yaml", "rl": "vision_grpo.yaml"}


def config_path(name: str) -> Path:
    return Path(str(resources.files("lightrft_plugin_qwen_vl.demo").joinpath(CONFIG_FILES[name])))


@dataclass
class VisionDemoPlan(ControlledDemoPlan):
    """The colour task on a tiny Qwen2-VL; the defaults are the documented demo."""

    family: Family = "qwen2_vl"
    task: ColorTask = field(default_factory=ColorTask)

    control = "blank"
    title = "the colour task (held-out pictures, greedy)"
    control_inputs = "blank pictures"

    def config_file(self, stage: str) -> Path:
        return config_path(stage)

    def prepare(self) -> None:
        p = self.paths
        build_tiny_qwen_vl(p["base"], family=self.family, seed=self.seed)
        write_task_data(
            p["data"],
            self.task,
            sft=self.sft_examples,
            rl=self.rl_prompts,
            held_out=self.held_out,
            seed=self.seed,
        )

    def chance(self) -> float:
        return 1 / len(COLORS)

    def try_it(self, result: ControlledDemoResult) -> str:
        picture = self.paths["data"] / "images" / "eval_00000.png"
        return f"try it: lightrft generate {result.rl_dir} --image {picture} --prompt '{QUESTION}'"
