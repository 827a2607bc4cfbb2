"""A run holds its folder (``run.output_dir``) from start to finish.

Rank 0 creates ``<output_dir>/.lightrft.lock`` atomically (``O_CREAT | O_EXCL``) with the
owner's host, pid and start time, and removes it at the end, also after an error (and, at
the latest, when the lock object is collected or the interpreter exits). A second
run on the same folder is refused; the lock of a dead process on this host is taken over
with a warning. Holding the folder, the run then removes the temporary folders that killed
runs left behind (``.step_000004.tmp-<pid>``: a full checkpoint each).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger("lightrft.trainer")

LOCK_FILE = ".lightrft.lock"
#: ``checkpoint.atomic_directory``'s temporary folders: ``.<name>.tmp-<pid>``.
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


class RunFolderBusy(FileExistsError):
    """Another run holds ``run.output_dir``."""


@dataclass
class RunLock:
    """The lock file of a held run folder and what it says about its owner."""

    path: Path
    owner: dict[str, Any]
    _finalizer: weakref.finalize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _remove_if_owned, self.path, self.owner)

    def release(self) -> None:
        """Remove the lock file if it is still this process's (once)."""
        self._finalizer()


def _remove_if_owned(path: Path, owner: dict[str, Any]) -> None:
    if _read_owner(path) == owner:
        path.unlink(missing_ok=True)


def hold_run_folder(output_dir: str | Path) -> RunLock:
    """Create ``output_dir`` and its lock; refuse a folder another live run holds, take over
    the lock of a dead process on this host; then clean up dead runs' temporary folders."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read_owner(path)
            if holder is None or not _is_dead(holder):
                raise RunFolderBusy(_busy_message(out, path, holder)) from None
            logger.warning(
                "run folder %s: taking over the lock of pid %s (started %s), which is no "
                "longer running",
                out,
                holder["pid"],
                holder.get("started", "?"),
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner, f)
        remove_dead_temporaries(out)
        return RunLock(path, owner)
    raise RunFolderBusy(_busy_message(out, path, _read_owner(path)))


def remove_dead_temporaries(output_dir: Path) -> list[Path]:
    """Remove the ``.<name>.tmp-<pid>`` folders and files under ``output_dir`` whose process
    is dead (a killed save's partial checkpoint or export, a metrics log being rewritten);
    returns them."""
    removed = []
    for candidate in sorted(output_dir.rglob(".*.tmp-*")):
        match = _TEMPORARY.match(candidate.name)
        if match is None or not candidate.exists():  # gone with a removed parent
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            if candidate.is_dir():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        logger.warning(
            "removed %d unfinished save(s) of killed runs: %s",
            len(removed),
            ", ".join(str(p.relative_to(output_dir)) for p in removed),
        )
    return removed


def _busy_message(out: Path, path: Path, holder: dict[str, Any] | None) -> str:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
        if holder is not None
        else "an unreadable lock file"
    )
    return (
        f"run.output_dir {out} is in use by another run ({who}); wait for that run to "
        f"finish or set run.output_dir to another folder (if no run uses it, delete {path})"
    )


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _is_dead(holder: dict[str, Any]) -> bool:
    """A lock owner known dead: on this host, and its pid runs no process."""
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
