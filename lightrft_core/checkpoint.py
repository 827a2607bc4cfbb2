"""Atomic checkpoint directories: a crash while saving never corrupts the last good one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | Path) -> Path:
    """Put back ``path.old`` if a crash happened between the two renames of a save."""
    path = Path(path)
    old = path.with_name(f"{path.name}.old")
    if not path.exists() and old.exists():
        old.rename(path)
    return path
