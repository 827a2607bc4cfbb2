"""Checks run before a training command loads anything heavy, so that a bad model folder,
a damaged weights file or an unwritable run folder is one clear error naming the config key,
the path and what to do -- not a traceback from deep inside transformers or torch."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

#: Files whose presence makes a folder a Hugging Face model folder.
MODEL_CONFIG = "config.json"
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own cap on the JSON header


class PreflightError(ValueError):
    """An input is unusable; the message names the key, the path and the fix."""


def looks_like_hub_id(path: str) -> bool:
    """``name`` or ``org/name``: what transformers would look up on the Hugging Face Hub."""
    if path.startswith((".", "/", "~")) or os.sep in path.replace("/", "") or "\\" in path:
        return False
    return 1 <= len(path.split("/")) <= 2 and all(path.split("/"))


def check_model_folder(path: str, key: str = "model.path") -> None:
    """Refuse a model path that is missing, a file, not a model folder, unreadable, or
    whose ``.safetensors`` weights are truncated or not safetensors at all. A hub id that
    is not a local path is left to transformers."""
    folder = Path(path).expanduser()
    if not folder.exists():
        if looks_like_hub_id(path):
            return
        raise PreflightError(
            f"{key}: model folder {path} not found; set {key} to a Hugging Face model folder "
            "(one with config.json) or a hub id like 'org/name'"
        )
    if not folder.is_dir():
        raise PreflightError(
            f"{key}: {path} is a file, not a model folder; set {key} to the folder that holds "
            f"{MODEL_CONFIG} and the weights"
        )
    if not (folder / MODEL_CONFIG).is_file():
        raise PreflightError(
            f"{key}: {path} is not a Hugging Face model folder (no {MODEL_CONFIG}); point "
            f"{key} at the folder save_pretrained wrote"
        )
    for file in sorted(folder.iterdir()):
        if not file.is_file():
            continue
        if not os.access(file, os.R_OK):
            raise PreflightError(
                f"{key}: cannot read {file} (permission denied); make it readable "
                f"(chmod a+r) or copy the model somewhere you can read"
            )
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
            if problem:
                raise PreflightError(
                    f"{key}: {file} is damaged ({problem}); re-download or re-export the model"
                )


def safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a complete safetensors file (garbage, truncated), or ``None``.

    The format: an 8-byte little-endian header length, a JSON header giving each tensor's
    byte range in the data that follows; the file must be as long as the last range ends.
    """
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors file"
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, SAFETENSORS_HEADER_LIMIT):
            return "not a safetensors file (invalid header)"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "not a safetensors file (header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (header is not a mapping)"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"truncated: {size} bytes of {expected}"
    return None


def check_output_dir(path: str, key: str = "run.output_dir") -> None:
    """Create the run folder if needed and make sure files can be written in it."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"{key}: {describe_os_error(exc, path)}") from None


#: What to do about a failed write, by ``errno``.
WRITE_ADVICE: dict[int, str] = {
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOSPC: "the disk is full; free space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is exceeded; free space or raise the quota",
    errno.EFBIG: "a file-size limit was hit; raise it (ulimit -f) or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}


def describe_os_error(exc: OSError, fallback_path: str = "") -> str:
    """One line for a failed file operation: what, where and what to do."""
    where = exc.filename or fallback_path
    advice = WRITE_ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
    return f"cannot write {where}: {advice}" if where else f"cannot write a file: {advice}"
