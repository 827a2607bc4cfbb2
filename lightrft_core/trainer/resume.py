"""What a checkpoint must match to be resumed (DESIGN.md, "The training loop").

A run has an id, made at a fresh start and kept across resumes. Every checkpoint carries it
with the run's configuration (its client state, and ``run.json`` beside the weights for
choosing among checkpoints); the run folder's ``run.json`` names the run that last started
there. On resume each changed option is decided per key (``FIXED``): options the weights,
the optimizer state or the data position depend on are refused, naming them; the others
take effect from the next step, said in one warning line.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import LightRFTConfig
from ..config.loader import config_to_dict

#: The run id of a folder (``<output_dir>/run.json``) and of a checkpoint (inside it).
RUN_FILE = "run.json"
#: Options a resumed run must keep: the model and its LoRA setup, the algorithm, the
#: strategy and world size, and what fixes the data position or the optimizer's state.
FIXED = (
    "model.",
    "algorithm.",
    "strategy.",
    "world_size",
    "run.seed",
    "data.",
    "engine.n_samples_per_prompt",
    "trainer.prompts_per_step",
    "trainer.optimizer_batch_size",
    "trainer.epochs",
    "trainer.weight_decay",
    "trainer.critic_learning_rate",
    "trainer.reward_normalize",
    "trainer.kl_controller",
)
#: Options under ``FIXED`` that can change on resume all the same.
CHANGEABLE = (
    "model.attn_implementation",
    "model.gradient_checkpointing",
    "model.logprob_chunk_size",
    "data.eval_path",
    "strategy.device",
    "strategy.timeout_s",
)
#: Options never compared (where the run is, and how it was asked to resume).
UNCOMPARED = ("run.output_dir", "run.name", "trainer.resume_from")


class ResumeError(ValueError):
    """A checkpoint this run must not continue from."""


@dataclass
class RunIdentity:
    """A run's id and its configuration as flat ``section.key`` values (plus ``world_size``)."""

    run_id: str
    config: dict[str, Any]

    @classmethod
    def fresh(cls, cfg: LightRFTConfig, world_size: int) -> RunIdentity:
        return cls(uuid.uuid4().hex[:12], flat_config(cfg, world_size))

    def state(self) -> dict[str, str]:
        """For a checkpoint's client state (plain strings load with ``weights_only``)."""
        return {"id": self.run_id, "config": json.dumps(self.config)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RunIdentity:
        return cls(str(state["id"]), json.loads(state["config"]))


def flat_config(cfg: LightRFTConfig, world_size: int) -> dict[str, Any]:
    """``{"trainer.learning_rate": 3e-3, ...}`` as JSON values, with ``world_size``."""
    flat: dict[str, Any] = {"world_size": world_size}
    for section, values in config_to_dict(cfg).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return json.loads(json.dumps(flat))


def is_fixed(key: str) -> bool:
    return key.startswith(FIXED) and key not in CHANGEABLE


def changed_options(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint's value, this run's value)}`` for every compared key that differs."""
    keys = sorted(set(saved) | set(current))
    return {
        key: (saved.get(key), current.get(key))
        for key in keys
        if key not in UNCOMPARED and saved.get(key) != current.get(key)
    }


def check_resume(
    saved: RunIdentity, current: RunIdentity, checkpoint: Path, *, folder_run: str | None
) -> dict[str, tuple[Any, Any]]:
    """Refuse ``checkpoint`` (``ResumeError``) when it belongs to another run than
    ``folder_run`` (the folder's run, checked for ``resume_from=latest``; ``None``: any) or
    was trained with other ``FIXED`` options; returns the changed options that apply."""
    if folder_run is not None and saved.run_id != folder_run:
        raise other_run_error(checkpoint.parent, folder_run)
    changed = changed_options(saved.config, current.config)
    refused = {key: values for key, values in changed.items() if is_fixed(key)}
    if refused:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ResumeError(
            f"cannot resume from {checkpoint}: it was trained with other values of options "
            f"that must not change: {listed}; set them back, or start a fresh run in another "
            "run.output_dir"
        )
    return changed


def other_run_error(checkpoints: Path, folder_run: str) -> ResumeError:
    return ResumeError(
        f"trainer.resume_from=latest: the checkpoints in {checkpoints} belong to another run "
        f"than the one last started in this folder (run {folder_run}); set run.output_dir to "
        "another folder, or trainer.resume_from=PATH to continue a checkpoint explicitly"
    )


def check_max_steps(max_steps: int, step: int, checkpoint: Path) -> None:
    """A resumed run must have steps left: nothing is trained or written otherwise."""
    if max_steps <= step:
        raise ResumeError(
            f"trainer.max_steps={max_steps} is not above the step of {checkpoint} ({step}): "
            f"nothing left to train; set trainer.max_steps above {step} to continue, or use "
            "the checkpoint as it is"
        )


def changes_line(changed: Mapping[str, tuple[Any, Any]], step: int) -> str:
    """The one warning line of the options a resumed run changes."""
    listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
    return f"options changed on resume, applied from step {step + 1}: {listed}"


def read_run_id(folder: Path) -> str | None:
    """The run id in ``folder/run.json`` (a run folder or a checkpoint); ``None`` without."""
    try:
        return str(json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_run_id(folder: Path, run_id: str) -> None:
    (folder / RUN_FILE).write_text(json.dumps({"id": run_id}) + "\n", encoding="utf-8")


def write_checkpoint_identity(checkpoint: Path, identity: RunIdentity, step: int) -> None:
    """``checkpoint/run.json``: the run's id and configuration, and the checkpoint's step."""
    record = {"id": identity.run_id, "step": step, "config": identity.config}
    (checkpoint / RUN_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def read_checkpoint_identity(checkpoint: Path) -> tuple[RunIdentity, int] | None:
    """What ``write_checkpoint_identity`` wrote (``None`` for a checkpoint without it)."""
    try:
        record = json.loads((checkpoint / RUN_FILE).read_text(encoding="utf-8"))
        return RunIdentity(str(record["id"]), dict(record["config"])), int(record["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
