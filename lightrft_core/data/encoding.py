"""A row's prompt as the model sees it: the formatted text, its token ids and, for a row
with images or audio, the processor's tensors.

A text-only row is formatted with the chat template and encoded by the tokenizer. A row
with media (``media.prompt_media``) needs the model's processor (``AutoProcessor``): the
chat template renders one placeholder per image and audio, and ``processor(text=...,
images=..., audio=..., sampling_rate=...)`` expands the placeholders and computes the media
tensors (e.g. ``pixel_values``, ``input_features`` and ``feature_attention_mask``). With a
processor every row, text rows included, uses the processor's chat template, so all rows
look alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..interfaces.multimodal import MultiModalInputs
from .audio import processor_audio_options
from .media import AUDIO_PART, IMAGE_PART, PromptMedia, RowProblem, prompt_media
from .rows import MAX_PROBLEMS_KEPT, DataError

logger = logging.getLogger("lightrft.data")

#: Processor outputs aligned with the tokens, not with the media: the token ids, their mask
#: and the token types (an actor derives those from the token ids). Every other tensor is
#: the media's, whatever its shape.
TOKEN_OUTPUTS = frozenset(
    {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "special_tokens_mask"}
)


@dataclass
class EncodedPrompt:
    """``text``: the formatted prompt (one placeholder per image or audio); ``ids``: its
    token ids (placeholders expanded); ``multimodal``: its media, ``None`` for a text-only
    row."""

    text: str
    ids: list[int]
    multimodal: MultiModalInputs | None = None


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (or processor) carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_messages(prompt: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    """``prompt`` (a string or chat messages) as chat messages, ``system_prompt`` first."""
    if isinstance(prompt, list):  # already a conversation: [{"role": ..., "content": ...}]
        messages = [dict(m) for m in prompt]
    else:
        messages = [{"role": "user", "content": str(prompt)}]
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def format_prompt(
    tokenizer: Any,
    prompt: Any,
    *,
    system_prompt: str | None = None,
    apply_chat_template: bool = True,
) -> str:
    """The text the model sees: the chat template with a generation prompt when the tokenizer
    (or processor) has one (and ``apply_chat_template``), else the raw prompt after
    ``system_prompt + "\\n"``.

    ``prompt`` is a string or a list of chat messages.
    """
    if apply_chat_template and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            chat_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
        )
    if isinstance(prompt, list):
        text = "\n".join(str(m.get("content", "")) for m in prompt)
    else:
        text = str(prompt)
    return f"{system_prompt}\n{text}" if system_prompt else text


def encode_prompt(tokenizer: Any, text: str, *, templated: bool) -> list[int]:
    """Token ids of a formatted prompt; a chat template already holds the special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=not templated))


class PromptEncoder:
    """Encodes the prompt of a row (module docstring) with the data options of a dataset.

    ``processor``: the model's ``AutoProcessor`` (``None`` for a text-only model); audio
    is read at the rate of its feature extractor, at most ``max_audio_seconds`` long;
    ``base_dir``: the folder relative media paths are relative to.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        processor: Any = None,
        input_key: str = "prompt",
        image_key: str = "images",
        audio_key: str = "audios",
        max_audio_seconds: float | None = 30.0,
        system_prompt: str | None = None,
        apply_chat_template: bool = True,
        base_dir: Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.input_key = input_key
        self.image_key = image_key
        self.audio_key = audio_key
        self.audio = (
            None if processor is None else processor_audio_options(processor, max_audio_seconds)
        )
        self.system_prompt = system_prompt
        self.apply_chat_template = apply_chat_template
        self.base_dir = base_dir
        has_processor_template = processor is not None and has_chat_template(processor)
        self.formatter = processor if has_processor_template else tokenizer
        self.templated = apply_chat_template and has_chat_template(self.formatter)

    def encode(self, row: Mapping[str, Any]) -> EncodedPrompt:
        """The prompt of ``row``; raises ``RowProblem`` (with its key) when it is unusable."""
        media = prompt_media(
            row,
            input_key=self.input_key,
            image_key=self.image_key,
            audio_key=self.audio_key,
            audio=self.audio,
            base_dir=self.base_dir,
        )
        if media.images:
            self._check_can_encode_images(len(media.images))
        if media.audios:
            self._check_templated(self.audio_key, "audio")
        text = format_prompt(
            self.formatter,
            media.prompt,
            system_prompt=self.system_prompt,
            apply_chat_template=self.apply_chat_template,
        )
        if self.processor is not None:
            self._check_placeholders(text, IMAGE_PART, len(media.images))
            self._check_placeholders(text, AUDIO_PART, len(media.audios))
        if not media.images and not media.audios:
            ids = encode_prompt(self.tokenizer, text, templated=self.templated)
            return EncodedPrompt(text, ids)
        return self._encode_media(text, media)

    def _check_can_encode_images(self, count: int) -> None:
        if self.processor is None:
            raise RowProblem(
                self.image_key,
                f"the row has {count} image(s) but the model has no processor (a text-only "
                "model); use a vision-language model whose folder holds its processor, or "
                "drop the images",
                skippable=False,
            )
        self._check_templated(self.image_key, "images")

    def _check_templated(self, key: str, what: str) -> None:
        if not self.templated:
            raise RowProblem(
                key,
                f"a row with {what} needs the processor's chat template to place its {what} "
                "placeholders; set data.apply_chat_template=true (or give the processor one)",
                skippable=False,
            )

    def _check_placeholders(self, text: str, kind: str, count: int) -> None:
        """One placeholder of ``kind`` (image, audio) in the formatted text per item."""
        # transformers' multimodal processors name their placeholders ``image_token``,
        # ``audio_token``
        placeholder = getattr(self.processor, f"{kind}_token", None)
        if placeholder and text.count(placeholder) != count:
            raise RowProblem(
                self.input_key,
                f"the formatted prompt has {text.count(placeholder)} {kind} placeholder(s) "
                f"({placeholder!r}) for {count} {kind}(s); the prompt's text must not hold "
                f"placeholders itself, and the chat template must render every {kind} part",
            )

    def _encode_media(self, text: str, media: PromptMedia) -> EncodedPrompt:
        inputs: dict[str, Any] = {}
        if media.images:
            inputs["images"] = media.images
        if media.audios and self.audio is not None:
            inputs.update(audio=media.audios, sampling_rate=self.audio.sampling_rate)
        try:
            encoded = self.processor(
                text=[text], add_special_tokens=False, return_tensors="pt", **inputs
            )
        except Exception as exc:  # the processor's own checks, e.g. placeholders vs items
            raise RowProblem(
                self.input_key,
                "the processor cannot encode the prompt with its media "
                f"({type(exc).__name__}: {exc})",
            ) from None
        ids = encoded["input_ids"]
        tensors = {
            key: value
            for key, value in encoded.items()
            if key not in TOKEN_OUTPUTS and isinstance(value, torch.Tensor)
        }
        multimodal = MultiModalInputs(media.images, tensors, media.audios)
        return EncodedPrompt(text, ids[0].tolist(), multimodal)


class MalformedRows:
    """The rows a dataset skips (``skip``) or refuses: ``report`` raises a ``DataError``
    naming the row, or counts it; ``log`` writes one line about the skipped ones."""

    def __init__(self, source: str, *, skip: bool) -> None:
        self.source = source
        self.skip = skip
        self.count = 0
        self.problems: list[str] = []

    def report(self, where: str, problem: RowProblem) -> None:
        message = f"{where}: {problem}"
        if not problem.skippable:
            raise DataError(message)
        if not self.skip:
            raise DataError(message + " (set data.skip_malformed=true to skip such rows)")
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(message)

    def log(self) -> None:
        if self.count:
            more = " ..." if self.count > len(self.problems) else ""
            logger.warning(
                "%s: skipped %d malformed row(s): %s%s",
                self.source,
                self.count,
                "; ".join(self.problems),
                more,
            )
