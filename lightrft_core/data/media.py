"""Images and audio of a data row: reading them from wherever the row keeps them, and
finding them in the prompt (an ``images`` / ``audios`` column or ``{"type": "image"}`` /
``{"type": "audio"}`` parts of chat messages).

An image is a local file path (a relative one is relative to the data file's folder), the
encoded bytes of a file, a ``datasets`` ``Image`` value (``{"bytes": ..., "path": ...}``)
or a PIL image; every image is converted to RGB. Audio is read by ``audio.load_audio``. A
problem is a ``RowProblem`` naming the row's key (``images[1]``, ``prompt[0].content[2]``);
the datasets add the file and line.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from .audio import AudioOptions, AudioSupportMissing, load_audio
from .files import local_file

#: The part types a message's content may hold; image and audio parts are media.
TEXT_PART, IMAGE_PART, AUDIO_PART = "text", "image", "audio"
MEDIA_PARTS = (IMAGE_PART, AUDIO_PART)
IMAGE_KINDS = "a local file path, the bytes of an image file, a datasets Image value or a PIL image"


class RowProblem(ValueError):
    """What is wrong with one key of a row; the dataset says which file and line.
    ``skippable``: ``data.skip_malformed`` may skip the row (``False`` when the row is
    fine but the run cannot use it, e.g. images for a text-only model)."""

    def __init__(self, key: str, message: str, *, skippable: bool = True) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.skippable = skippable


def load_image(value: Any, *, base_dir: Path | None = None) -> Image.Image:
    """``value`` (module docstring) decoded to an RGB image; a ``ValueError`` saying why not."""
    if isinstance(value, Image.Image):
        return _decoded(lambda: value, "cannot convert the PIL image")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return _decoded(lambda: Image.open(io.BytesIO(data)), f"cannot decode {len(data)} bytes")
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:  # a datasets Image value keeps the file's bytes
            return load_image(value["bytes"])
        if value.get("path"):
            return load_image(str(value["path"]), base_dir=base_dir)
        raise ValueError("the datasets Image value has neither bytes nor a path")
    if isinstance(value, (str, Path)):
        return _read_file(str(value), base_dir)
    raise ValueError(f"expected {IMAGE_KINDS}, got {type(value).__name__}")


def _read_file(name: str, base_dir: Path | None) -> Image.Image:
    path, where = local_file(name, base_dir, "image")
    return _decoded(lambda: Image.open(path), f"cannot read {name!r}", where)


def _decoded(open_image: Callable[[], Image.Image], what: str, where: str = "") -> Image.Image:
    """The image ``open_image`` opens, read in full (a truncated file fails here, not later)
    and in RGB; a ``ValueError`` starting with ``what`` if it cannot be."""
    try:
        return open_image().convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{what}: not an image file PIL can decode{where}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{what}: {reason}{where}") from None


@dataclass
class PromptMedia:
    """A row's prompt with its media: ``prompt`` as the chat template reads it (every media
    part reduced to ``{"type": "image"}`` / ``{"type": "audio"}``, one per item, in order),
    ``images`` (RGB) and ``audios`` (mono float32 waveforms at the feature extractor's rate),
    each in the order of their parts."""

    prompt: Any
    images: list[Image.Image]
    audios: list[np.ndarray] = field(default_factory=list)


#: One media item of a row: its key (``images[0]``, ``prompt[0].content[1]``) and value.
Source = tuple[str, Any]
_Item = TypeVar("_Item")


def prompt_media(
    row: Mapping[str, Any],
    *,
    input_key: str,
    image_key: str,
    audio_key: str = "audios",
    audio: AudioOptions | None = None,
    base_dir: Path | None = None,
) -> PromptMedia:
    """The prompt of ``row`` and its media, from the ``image_key`` / ``audio_key`` columns
    (a list, or one item) and from the media parts of the messages in ``input_key``.

    A part ``{"type": "image", "image": X}`` (``{"type": "audio", "audio": X}``) holds its
    own item; a part without one is a placeholder filled from the kind's column in order,
    and then the column must hold exactly one item per placeholder. Column items of a
    prompt without parts of their kind go in front of the first user message's text
    (images before audio). ``audio``: how the model reads audio, ``None`` when it reads
    none (a row with audio is then refused). Raises ``RowProblem``.
    """
    columns = {
        IMAGE_PART: (image_key, _column_items(row.get(image_key))),
        AUDIO_PART: (audio_key, _column_items(row.get(audio_key))),
    }
    has_column = any(items for _, items in columns.values())
    prompt = row[input_key]
    if not isinstance(prompt, list):
        if not has_column:
            return PromptMedia(prompt, [])
        prompt = [{"role": "user", "content": str(prompt)}]
    messages, parts = _media_parts(prompt, input_key)
    if not has_column and not any(parts.values()):
        return PromptMedia(row[input_key], [])
    sources: dict[str, list[Source]] = {}
    leading: list[str] = []
    for kind, (column_key, column) in columns.items():
        sources[kind] = _kind_sources(kind, parts[kind], column_key, column)
        if column and not parts[kind]:
            leading.append(kind)
    if leading:  # those kinds' column items lead the first user message
        counts = {kind: len(columns[kind][1]) for kind in leading}
        messages = _with_leading_parts(messages, counts, input_key)
    images = [
        _loaded(key, partial(load_image, value, base_dir=base_dir))
        for key, value in sources[IMAGE_PART]
    ]
    return PromptMedia(messages, images, _audios(sources[AUDIO_PART], audio, base_dir))


def _audios(
    sources: list[Source], options: AudioOptions | None, base_dir: Path | None
) -> list[np.ndarray]:
    if sources and options is None:
        raise RowProblem(
            sources[0][0],
            f"the row has {len(sources)} audio item(s) but the model reads no audio (it has no "
            "processor with an audio feature extractor); use an audio-language model whose "
            "folder holds its processor, or drop the audio",
            skippable=False,
        )
    if options is None:
        return []
    return [
        _loaded(key, partial(load_audio, value, options, base_dir=base_dir))
        for key, value in sources
    ]


def _loaded(key: str, load: Callable[[], _Item]) -> _Item:
    """``load()``, its ``ValueError`` a ``RowProblem`` naming ``key``."""
    try:
        return load()
    except AudioSupportMissing as exc:  # the environment's, not the row's: never skipped
        raise RowProblem(key, str(exc), skippable=False) from None
    except ValueError as exc:
        raise RowProblem(key, str(exc)) from None


def _kind_sources(
    kind: str, parts: list[Source], column_key: str, column: list[Any]
) -> list[Source]:
    """The items of one kind in order: its parts' (placeholders filled from the column in
    order), or the column's when the prompt has no part of the kind."""
    if not parts:
        return [(f"{column_key}[{i}]", value) for i, value in enumerate(column)]
    placeholders = [key for key, value in parts if value is None]
    if len(column) != len(placeholders):
        raise RowProblem(
            column_key if column else placeholders[0],
            f"{len(column)} {kind}(s) in {column_key!r} but the prompt has "
            f"{len(placeholders)} {kind} placeholder(s) ({{'type': '{kind}'}} parts without "
            f"an '{kind}'); give one {kind} per placeholder",
        )
    filled = iter(enumerate(column))
    return [
        (key, value) if value is not None else _column_source(column_key, next(filled))
        for key, value in parts
    ]


def has_images(row: Mapping[str, Any], *, input_key: str, image_key: str) -> str | None:
    """The key of the first image ``row`` carries (column or message part), else ``None``."""
    return _first_item(row, input_key, image_key, IMAGE_PART)


def has_audio(row: Mapping[str, Any], *, input_key: str, audio_key: str) -> str | None:
    """The key of the first audio ``row`` carries (column or message part), else ``None``."""
    return _first_item(row, input_key, audio_key, AUDIO_PART)


def _first_item(row: Mapping[str, Any], input_key: str, column_key: str, kind: str) -> str | None:
    if _column_items(row.get(column_key)):
        return f"{column_key}[0]"
    prompt = row.get(input_key)
    if isinstance(prompt, list):
        for m, message in enumerate(prompt):
            content = message.get("content") if isinstance(message, Mapping) else None
            for p, part in enumerate(content if isinstance(content, list) else []):
                if isinstance(part, Mapping) and part.get("type") == kind:
                    return f"{input_key}[{m}].content[{p}]"
    return None


def _column_source(column_key: str, item: tuple[int, Any]) -> Source:
    index, value = item
    return f"{column_key}[{index}]", value


def _column_items(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _media_parts(
    prompt: list[Any], input_key: str
) -> tuple[list[dict[str, Any]], dict[str, list[Source]]]:
    """The messages with media parts reduced to ``{"type": kind}``, and each kind's parts
    as ``(key, item)`` in order (item ``None`` for a placeholder)."""
    messages: list[dict[str, Any]] = []
    sources: dict[str, list[Source]] = {kind: [] for kind in MEDIA_PARTS}
    for m, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise RowProblem(f"{input_key}[{m}]", f"expected a chat message, got {message!r}")
        content = message.get("content")
        if not isinstance(content, list):
            messages.append(dict(message))
            continue
        parts: list[dict[str, Any]] = []
        for p, part in enumerate(content):
            key = f"{input_key}[{m}].content[{p}]"
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == TEXT_PART:
                parts.append({"type": TEXT_PART, "text": str(part.get("text", ""))})
            elif kind in MEDIA_PARTS:
                parts.append({"type": kind})
                sources[kind].append((key, part.get(kind)))
            else:
                raise RowProblem(
                    key, f"unsupported content part {part!r}: use text, image and audio parts"
                )
        messages.append({**message, "content": parts})
    return messages, sources


def _with_leading_parts(
    messages: list[dict[str, Any]], counts: Mapping[str, int], input_key: str
) -> list[dict[str, Any]]:
    """``messages`` with ``counts[kind]`` parts of each kind (in order) in front of the
    first user message's content."""
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, list):
                content = [{"type": TEXT_PART, "text": str(content or "")}]
            media = [{"type": kind} for kind, count in counts.items() for _ in range(count)]
            return [
                *messages[:index],
                {**message, "content": media + content},
                *messages[index + 1 :],
            ]
    what = " and ".join("images" if kind == IMAGE_PART else "audio" for kind in counts)
    raise RowProblem(input_key, f"the row has {what} but the prompt has no user message")
