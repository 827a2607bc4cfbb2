"""Images of a data row: reading them from wherever the row keeps them, and finding them in
the prompt (an ``images`` column or ``{"type": "image"}`` parts of chat messages).

An image is a local file path (a relative one is relative to the data file's folder), the
encoded bytes of a file, a ``datasets`` ``Image`` value (``{"bytes": ..., "path": ...}``)
or a PIL image; every image is converted to RGB. A problem is a ``RowProblem`` naming the
row's key (``images[1]``, ``prompt[0].content[2]``); the datasets add the file and line.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

#: The part types a message's content may hold.
TEXT_PART, IMAGE_PART = "text", "image"
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
    if name.startswith(("http://", "https://")):
        raise ValueError(
            f"cannot read {name!r}: URLs are not fetched; download the image and give its path"
        )
    path = Path(name.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    where = "" if str(path) == name else f" (looked at {path})"
    if not path.exists():
        raise ValueError(f"cannot read {name!r}: no such file{where}")
    if path.is_dir():
        raise ValueError(f"cannot read {name!r}: a folder, not an image file{where}")
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
    """A row's prompt with its images: ``prompt`` as the chat template reads it (every image
    part reduced to ``{"type": "image"}``, one per image, in order) and ``images`` (RGB)."""

    prompt: Any
    images: list[Image.Image]


def prompt_media(
    row: Mapping[str, Any],
    *,
    input_key: str,
    image_key: str,
    base_dir: Path | None = None,
) -> PromptMedia:
    """The prompt of ``row`` and its images, from ``image_key`` (a list, or one image) and
    from image parts of the messages in ``input_key``.

    A part ``{"type": "image", "image": X}`` holds its own image; a part without one is a
    placeholder filled from the ``image_key`` column in order, and then the column must
    hold exactly one image per placeholder. Column images of a prompt without image parts
    go in front of the first user message's text. Raises ``RowProblem``.
    """
    column = _column_images(row.get(image_key))
    prompt = row[input_key]
    if not isinstance(prompt, list):
        if not column:
            return PromptMedia(prompt, [])
        prompt = [{"role": "user", "content": str(prompt)}]
    messages, sources, placeholders = _image_parts(prompt, input_key)
    if not sources and not column:
        return PromptMedia(row[input_key], [])
    if not sources:  # no image part: the column's images lead the first user message
        messages = _with_leading_images(messages, len(column), input_key)
        sources = [(f"{image_key}[{i}]", value) for i, value in enumerate(column)]
    elif len(column) != len(placeholders):
        raise RowProblem(
            image_key if column else placeholders[0],
            f"{len(column)} image(s) in {image_key!r} but the prompt has {len(placeholders)} "
            "image placeholder(s) ({'type': 'image'} parts without an 'image'); give one "
            "image per placeholder",
        )
    else:
        filled = iter(enumerate(column))
        sources = [
            (key, value) if key not in placeholders else _column_source(image_key, next(filled))
            for key, value in sources
        ]
    images = []
    for key, value in sources:
        try:
            images.append(load_image(value, base_dir=base_dir))
        except ValueError as exc:
            raise RowProblem(key, str(exc)) from None
    return PromptMedia(messages, images)


def has_images(row: Mapping[str, Any], *, input_key: str, image_key: str) -> str | None:
    """The key of the first image ``row`` carries (column or message part), else ``None``."""
    if _column_images(row.get(image_key)):
        return f"{image_key}[0]"
    prompt = row.get(input_key)
    if isinstance(prompt, list):
        for m, message in enumerate(prompt):
            content = message.get("content") if isinstance(message, Mapping) else None
            for p, part in enumerate(content if isinstance(content, list) else []):
                if isinstance(part, Mapping) and part.get("type") == IMAGE_PART:
                    return f"{input_key}[{m}].content[{p}]"
    return None


def _column_source(image_key: str, item: tuple[int, Any]) -> tuple[str, Any]:
    index, value = item
    return f"{image_key}[{index}]", value


def _column_images(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _image_parts(
    prompt: list[Any], input_key: str
) -> tuple[list[dict[str, Any]], list[tuple[str, Any]], list[str]]:
    """The messages with image parts reduced to ``{"type": "image"}``, each image part's
    ``(key, source)`` in order (``None`` for a placeholder) and the placeholders' keys."""
    messages: list[dict[str, Any]] = []
    sources: list[tuple[str, Any]] = []
    placeholders: list[str] = []
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
            elif kind == IMAGE_PART:
                parts.append({"type": IMAGE_PART})
                sources.append((key, part.get("image")))
                if part.get("image") is None:
                    placeholders.append(key)
            else:
                raise RowProblem(
                    key, f"unsupported content part {part!r}: use text and image parts"
                )
        messages.append({**message, "content": parts})
    return messages, sources, placeholders


def _with_leading_images(
    messages: list[dict[str, Any]], count: int, input_key: str
) -> list[dict[str, Any]]:
    """``messages`` with ``count`` image parts in front of the first user message's content."""
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, list):
                content = [{"type": TEXT_PART, "text": str(content or "")}]
            images = [{"type": IMAGE_PART} for _ in range(count)]
            return [
                *messages[:index],
                {**message, "content": images + content},
                *messages[index + 1 :],
            ]
    raise RowProblem(input_key, "the row has images but the prompt has no user message")
