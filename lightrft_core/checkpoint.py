"""Atomic checkpoint directories: a crash while saving never corrupts the last good one.

What LightRFT writes gets the usual permissions (``0o666``/``0o777`` less the umask), also
where a writer creates private files (``safetensors`` writes ``0o600``), so that a teammate
can load a shared run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EARLIER = "resume from an earlier checkpoint"


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: damaged, or written for another model."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (or its class name when it has none); a first
    line ending in ``:`` (torch's ``Error(s) in loading state_dict for M:``) gets the next."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def damaged(path: str | Path, part: str, problem: str | BaseException) -> CheckpointError:
    """The error for a checkpoint whose ``part`` (a file or folder in it) is truncated or not
    a checkpoint at all."""
    reason = first_line(problem) if isinstance(problem, BaseException) else problem
    return CheckpointError(f"checkpoint {path}: {part} is damaged ({reason}); {EARLIER}")


def does_not_fit(path: str | Path, exc: BaseException) -> CheckpointError:
    """The error for a checkpoint written for another model size or LoRA setup."""
    return CheckpointError(
        f"checkpoint {path} does not fit the model (another model size or LoRA setup: "
        f"{first_line(exc)}); resume with the model.path and model.lora_* of the run that "
        "wrote it, or start a new run"
    )


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    If the body raises, ``path`` is left exactly as it was and the temporary directory is
    removed. The swap is two renames on the same filesystem, so at every moment either the
    old or the new complete checkpoint exists under ``path`` (or under ``path.old`` in the
    instant between the renames, which ``recover_directory`` puts back).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f"{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    apply_umask(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | Path) -> None:
    """Give ``root`` and everything under it the permissions a new file or folder gets from
    the umask: ``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders."""
    mask = current_umask()
    root = Path(root)
    root.chmod(0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            Path(folder, name).chmod(0o777 & ~mask)
        for name in files:
            Path(folder, name).chmod(0o666 & ~mask)


def recover_directory(path: str | Path) -> Path:
    """Put back ``path.old`` if a crash happened between the two renames of a save."""
    path = Path(path)
    old = path.with_name(f"{path.name}.old")
    if not path.exists() and old.exists():
        old.rename(path)
    return path
