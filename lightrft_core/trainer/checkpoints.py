"""Checkpoint folders of a run: ``<output_dir>/checkpoints/step_000010``."""

from __future__ import annotations

import re
from pathlib import Path

from ..checkpoint import recover_directory

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (``None`` when there is none)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for old in root.glob("*.old"):  # a crash between the two renames of a save
        recover_directory(old.with_suffix(""))
    steps = sorted(
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    )
    return steps[-1][1] if steps else None


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """``trainer.resume_from``: ``None``, ``"latest"`` (of this run's output_dir) or a path."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(f"trainer.resume_from: no checkpoint folder at {path}")
    return path
