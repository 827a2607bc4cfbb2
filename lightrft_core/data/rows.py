"""Reading rows (one ``dict`` per example) from JSONL, JSON, Parquet or a ``datasets`` source.

Every malformed row is reported with where it is (``file:line`` for JSONL, ``item N`` for a
JSON list, ``row N`` for Parquet and ``datasets``; ``N`` counts from 0) and which key is
wrong -- or, with ``skip_malformed=True``, skipped and counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("lightrft.data")

#: How many problems a skipping read keeps for its log line.
MAX_PROBLEMS_KEPT = 5
HF_PREFIX = "hf:"
SOURCE_KINDS = "a .jsonl, .json or .parquet file, a saved dataset folder, or 'hf:NAME[:split]'"


class DataError(ValueError):
    """A data source or one of its rows is unusable; the message says where and why."""


@dataclass
class RowsResult:
    """The rows read from ``source`` and where each is (``locations``: ``file:line``,
    ``file: row N`` ...); ``skipped`` malformed rows and the first ``problems``."""

    rows: list[dict[str, Any]]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    source: str = ""
    locations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One log line about the skipped rows (empty when none were skipped)."""
        if not self.skipped:
            return ""
        shown = "; ".join(self.problems)
        more = " ..." if self.skipped > len(self.problems) else ""
        return f"{self.source}: skipped {self.skipped} malformed row(s): {shown}{more}"


def is_empty(value: Any) -> bool:
    """``None``, a blank string or an empty list/mapping."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (list, tuple, dict)) and not value


def row_problem(
    row: Any, required_keys: Sequence[str], *, what: str = "a JSON object"
) -> str | None:
    """Why ``row`` is malformed (not a mapping, a required key missing or empty), or ``None``."""
    if not isinstance(row, Mapping):
        return f"expected {what}, got {type(row).__name__}"
    for key in required_keys:
        if key not in row:
            present = ", ".join(str(k) for k in row) or "none"
            return f"missing key {key!r} (keys present: {present})"
        if is_empty(row[key]):
            return f"empty {key!r}"
    return None


def read_rows(
    source: str | Path, *, required_keys: Sequence[str] = (), skip_malformed: bool = False
) -> RowsResult:
    """All rows of ``source`` that have every key of ``required_keys`` (non-empty).

    ``source``: a ``.jsonl``/``.json``/``.parquet`` file, a dataset folder (``save_to_disk``
    output or a folder of data files) or ``"hf:NAME[:split]"`` / ``"hf:NAME:config:split"``.
    Raises ``DataError`` on the first malformed row, unless ``skip_malformed``.
    """
    name = str(source)
    result = RowsResult(rows=[], source=name)
    for location, row in _raw_rows(name):
        problem = location.problem or row_problem(row, required_keys)
        if problem is None:
            result.rows.append(dict(row))
            result.locations.append(location.where)
            continue
        message = f"{location.where}: {problem}"
        if not skip_malformed:
            raise DataError(message + " (set data.skip_malformed=true to skip such rows)")
        result.skipped += 1
        if len(result.problems) < MAX_PROBLEMS_KEPT:
            result.problems.append(message)
    if result.skipped:
        logger.warning(result.summary())
    if not result.rows:
        detail = "it is empty"
        if result.skipped:
            detail = f"all {result.skipped} rows are malformed, e.g. {result.problems[0]}"
        raise DataError(f"{name}: no usable rows ({detail})")
    return result


def source_folder(source: str | Path) -> Path | None:
    """The folder that relative file names in ``source``'s rows (image paths) are relative
    to: a data file's folder, a dataset folder itself; ``None`` (the working directory) for
    ``hf:`` sources."""
    name = str(source)
    if name.startswith(HF_PREFIX):
        return None
    path = Path(name)
    return path if path.is_dir() else path.parent


# ---------------------------------------------------------------------- sources
@dataclass
class _Location:
    where: str
    problem: str | None = None  # a problem found while reading (bad JSON, bad bytes)


def _raw_rows(source: str) -> Iterator[tuple[_Location, Any]]:
    if source.startswith(HF_PREFIX):
        yield from _dataset_rows(source, _undecoded_audio(_load_hub(source)))
        return
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_dir():
        yield from _dataset_rows(source, _undecoded_audio(_load_folder(source)))
        return
    if not path.exists():
        if suffix in (".jsonl", ".json", ".parquet"):
            raise DataError(f"{source}: file not found")
        raise DataError(f"{source}: not found; a data source is {SOURCE_KINDS}")
    if suffix == ".jsonl":
        yield from _jsonl_rows(source)
    elif suffix == ".json":
        yield from _json_rows(source)
    elif suffix == ".parquet":
        yield from _parquet_rows(source)
    else:
        raise DataError(
            f"{source}: unsupported file type {suffix or '(none)'!r}; use {SOURCE_KINDS}"
        )


def _jsonl_rows(source: str) -> Iterator[tuple[_Location, Any]]:
    with open(source, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{source}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield _Location(where, f"not UTF-8 text ({exc.reason} at byte {exc.start})"), None
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield _Location(where, f"not valid JSON: {exc.msg} at column {exc.colno}"), None
                continue
            yield _Location(where), row


def _json_rows(source: str) -> Iterator[tuple[_Location, Any]]:
    try:
        with open(source, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, list):
        raise DataError(
            f"{source}: expected a JSON list of objects, got {type(data).__name__} "
            "(for one object per line use a .jsonl file)"
        )
    for index, row in enumerate(data):
        yield _Location(f"{source}: item {index}"), row


def _parquet_rows(source: str) -> Iterator[tuple[_Location, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{source}: reading Parquet needs pyarrow: pip install lightrft-core[datasets]"
        ) from None
    try:
        table = pq.read_table(source)
    except Exception as exc:
        raise DataError(f"{source}: not a readable Parquet file ({exc})") from None
    yield from _dataset_rows(source, table.to_pylist())


def _dataset_rows(source: str, rows: Iterable[Any]) -> Iterator[tuple[_Location, Any]]:
    for index, row in enumerate(rows):
        yield _Location(f"{source}: row {index}"), row


def _import_datasets(source: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source}: reading a datasets source needs the 'datasets' package: "
            "pip install lightrft-core[datasets]"
        ) from None
    return datasets


def _undecoded_audio(data: Any) -> Any:
    """``data`` with its ``Audio`` columns (one, or a list per row) read as the files'
    ``{"bytes", "path"}``: ``datasets`` decodes audio with torchcodec, the rows' audio is
    decoded by ``audio.load_audio`` instead."""
    import datasets

    for name, feature in data.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            data = data.cast_column(name, datasets.Audio(decode=False))
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Audio):
            data = data.cast_column(name, datasets.List(datasets.Audio(decode=False)))
    return data


def _load_hub(source: str) -> Any:
    datasets = _import_datasets(source)
    parts = source[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"{source}: expected 'hf:NAME', 'hf:NAME:split' or 'hf:NAME:config:split'")
    name, config, split = parts[0], None, "train"
    if len(parts) == 2:
        split = parts[1]
    elif len(parts) == 3:
        config, split = parts[1], parts[2]
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise DataError(f"{source}: could not load dataset {name!r}: {exc}") from None


def _load_folder(source: str) -> Any:
    datasets = _import_datasets(source)
    path = Path(source)
    saved = any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json"))
    try:
        data = datasets.load_from_disk(source) if saved else datasets.load_dataset(source)
    except Exception as exc:
        raise DataError(f"{source}: could not load the dataset folder: {exc}") from None
    if isinstance(data, Mapping):  # a DatasetDict: use its train split
        if "train" not in data:
            splits = ", ".join(data) or "none"
            raise DataError(f"{source}: the dataset has no 'train' split (splits: {splits})")
        data = data["train"]
    return data
