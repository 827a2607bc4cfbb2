"""Checkpoint folders of a run: ``<output_dir>/checkpoints/step_000010``."""

from __future__ import annotations

import re
from pathlib import Path

from ..checkpoint import recover_directory
from .resume import other_run_error, read_run_id

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(output_dir: str | Path, run_id: str | None = None) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (``None`` when there is none); with
    ``run_id``, the newest of that run (or of unknown run: written by an older LightRFT),
    and an error when only other runs' checkpoints are there."""
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
    if run_id is not None and steps:
        mine = [(step, p) for step, p in steps if read_run_id(p) in (run_id, None)]
        if not mine:
            raise other_run_error(root, run_id)
        steps = mine
    return steps[-1][1] if steps else None


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """``trainer.resume_from``: ``None``, ``"latest"`` (the newest checkpoint of the run last
    started in output_dir) or a path."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir, read_run_id(Path(output_dir)))
    path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(f"trainer.resume_from: no checkpoint folder at {path}")
    return path
