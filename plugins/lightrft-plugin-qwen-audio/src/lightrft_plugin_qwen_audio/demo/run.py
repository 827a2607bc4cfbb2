"""``lightrft demo --task audio``: a tiny Qwen2-Audio and the pitch task -> SFT
warm-up (the answer's form only) -> GRPO through ``lightrft train``'s code -> held-out
accuracy, and the same model on silent clips as the control (task.py says why). The flow is
the core's :mod:`lightrft_core.demo.controlled`; this module is the task's part of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lightrft_core.demo.controlled import ControlledDemoPlan, ControlledDemoResult

from ..tiny import build_tiny_qwen2_audio
from .task import PITCHES, QUESTION, PitchTask, write_task_data

#: The configuration files the demo runs (also shipped as examples/demo_audio_*.yaml).
CONFIG_FILES = {"sft": "audio_sft.yaml", "rl": "audio_grpo.yaml"}


def config_path(name: str) -> Path:
    return Path(
        str(resources.files("lightrft_plugin_qwen_audio.demo").joinpath(CONFIG_FILES[name]))
    )


@dataclass
class AudioDemoPlan(ControlledDemoPlan):
    """The pitch task on a tiny Qwen2-Audio; the defaults are the documented demo."""

    rl_prompts: int = 6_400
    task: PitchTask = field(default_factory=PitchTask)

    control = "silent"
    title = "the pitch task (held-out clips, greedy)"
    control_inputs = "silent clips"

    def config_file(self, stage: str) -> Path:
        return config_path(stage)

    def prepare(self) -> None:
        p = self.paths
        build_tiny_qwen2_audio(p["base"], seed=self.seed)
        write_task_data(
            p["data"],
            self.task,
            sft=self.sft_examples,
            rl=self.rl_prompts,
            held_out=self.held_out,
            seed=self.seed,
        )

    def chance(self) -> float:
        return 1 / len(PITCHES)

    def try_it(self, result: ControlledDemoResult) -> str:
        clip = self.paths["data"] / "audio" / "eval_00000.wav"
        return f"try it: lightrft generate {result.rl_dir} --audio {clip} --prompt '{QUESTION}'"
