"""Read an offline W&B run back without uploading it: the records of its ``run-<id>.wandb``
file (a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of records, each with a
7-byte header, whose payloads are ``wandb_internal_pb2.Record`` messages)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7  # crc32 (4), length (2), type (1)
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[Any]:
    """The ``Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        parts += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            # protobuf builds the message classes at import time, unseen by type checkers
            yield wandb_internal_pb2.Record.FromString(parts)  # type: ignore[attr-defined]
            parts = b""


def offline_runs(wandb_dir: str | Path) -> list[Path]:
    """The ``offline-run-*`` folders under ``wandb_dir`` (``<dir>/wandb``), oldest first."""
    return sorted(Path(wandb_dir).glob("offline-run-*"))


def read_offline_run(folder: Path) -> dict[str, Any]:
    """``{"id", "config": {key: value}, "history": [{key: value}], "summary": {key: value}}``
    of an ``offline-run-*`` folder (history rows carry ``_step``)."""
    (run_file,) = folder.glob("run-*.wandb")
    out: dict[str, Any] = {"id": None, "config": {}, "history": [], "summary": {}}
    for record in records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            out["config"].update(_items(record.run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
    return out


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
