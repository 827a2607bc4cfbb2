"""Finding the local file a data row names (an image or an audio clip)."""

from __future__ import annotations

from pathlib import Path


def local_file(name: str, base_dir: Path | None, kind: str) -> tuple[Path, str]:
    """The path of the ``kind`` file (``"image"``, ``"audio"``) a row names -- ``file://``
    and ``~`` read, a relative name under ``base_dir`` -- and ``where``: ``" (looked at
    PATH)"`` when that path differs from ``name``, else ``""``, for error messages. A
    ``ValueError`` for a URL, a missing file or a folder."""
    if name.startswith(("http://", "https://")):
        raise ValueError(
            f"cannot read {name!r}: URLs are not fetched; download the {kind} and give its path"
        )
    path = Path(name.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    where = "" if str(path) == name else f" (looked at {path})"
    if not path.exists():
        raise ValueError(f"cannot read {name!r}: no such file{where}")
    if path.is_dir():
        raise ValueError(f"cannot read {name!r}: a folder, not an {kind} file{where}")
    return path, where
