"""Reward-model data: a prompt with a preferred (``chosen``) and a dispreferred
(``rejected``) response. Each side becomes the text a reward model scores in RL: the prompt
formatted as the policy sees it, followed by the response.

With the model's processor (a vision- or audio-language model), rows may carry images and
audio (``images`` / ``audios`` columns or media parts of the messages, as prompt rows:
``encoding.PromptEncoder``), shared by both sides; the prompt is then formatted with the
processor's chat template, one placeholder per item. Without one (a text model), rows with
media are refused (docs/multimodal.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from .encoding import MalformedRows, PromptEncoder, format_prompt
from .media import RowProblem, has_audio, has_images
from .rows import DataError, read_rows, row_problem, source_folder

logger = logging.getLogger("lightrft.data")


@dataclass
class PreferencePair:
    chosen: str  # prompt + chosen response
    rejected: str  # prompt + rejected response
    images: list[Any] = field(default_factory=list)  # the prompt's images (both sides)
    audios: list[Any] = field(default_factory=list)  # its waveforms, at the processor's rate
    labels: dict[str, Any] = field(default_factory=dict)  # the row's label_keys values (heads)


class PreferenceDataset(Sequence[PreferencePair]):
    """Preference pairs; a pair whose longer side exceeds ``max_length`` tokens (media
    placeholders expanded) is dropped and counted in ``num_filtered``; ``processor``
    encodes rows with media (module docstring), malformed ones skipped with
    ``skip_malformed`` and counted in ``num_skipped``."""

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        tokenizer: Any,
        *,
        input_key: str = "prompt",
        chosen_key: str = "chosen",
        rejected_key: str = "rejected",
        system_prompt: str | None = None,
        apply_chat_template: bool = True,
        max_length: int | None = None,
        source: str = "rows",
        image_key: str = "images",
        audio_key: str = "audios",
        max_audio_seconds: float | None = 30.0,
        locations: Sequence[str] | None = None,
        processor: Any = None,
        base_dir: Path | None = None,
        skip_malformed: bool = False,
        label_keys: Sequence[str] = (),
    ) -> None:
        self.pairs: list[PreferencePair] = []
        self.num_filtered = 0
        encoder = PromptEncoder(
            tokenizer,
            processor=processor,
            input_key=input_key,
            image_key=image_key,
            audio_key=audio_key,
            max_audio_seconds=max_audio_seconds,
            system_prompt=system_prompt,
            apply_chat_template=apply_chat_template,
            base_dir=base_dir,
        )
        malformed = MalformedRows(source, skip=skip_malformed)
        for index, row in enumerate(rows):
            where = locations[index] if locations else f"{source}: row {index}"
            required = (input_key, chosen_key, rejected_key, *label_keys)
            problem = row_problem(row, required, what="a mapping")
            if problem:
                raise DataError(f"{where}: {problem}")
            if processor is None:
                pair = _text_pair(row, tokenizer, where, encoder, chosen_key, rejected_key)
                lengths = [
                    len(tokenizer(text)["input_ids"]) for text in (pair.chosen, pair.rejected)
                ]
            else:
                try:
                    prompt = encoder.encode(row)
                except RowProblem as exc:
                    malformed.report(where, exc)
                    continue
                responses = (str(row[chosen_key]), str(row[rejected_key]))
                media = prompt.multimodal
                pair = PreferencePair(
                    prompt.text + responses[0],
                    prompt.text + responses[1],
                    [] if media is None else list(media.images),
                    [] if media is None else list(media.audios),
                )
                lengths = [
                    len(prompt.ids) + len(tokenizer.encode(text, add_special_tokens=False))
                    for text in responses
                ]
            if max_length is not None and max(lengths) > max_length:
                self.num_filtered += 1
                continue
            pair.labels = {key: row[key] for key in label_keys}
            self.pairs.append(pair)
        malformed.log()
        self.num_skipped = malformed.count
        if self.num_filtered:
            logger.info(
                "%s: dropped %d pair(s) longer than %s tokens",
                source,
                self.num_filtered,
                max_length,
            )
        if not self.pairs:
            raise DataError(
                f"{source}: no preference pairs left ({self.num_skipped} malformed, "
                f"{self.num_filtered} longer than max_length={max_length} tokens)"
            )

    @classmethod
    def from_source(
        cls,
        source: str,
        tokenizer: Any,
        config: Any,
        *,
        max_length: int | None = None,
        processor: Any = None,
        label_keys: Sequence[str] = (),
    ) -> PreferenceDataset:
        """Read ``source`` with the options of a ``DataConfig`` (``input_key``,
        ``chosen_key``, ``rejected_key``, ``image_key``, ``audio_key``, ``max_audio_seconds``,
        ``system_prompt``, ``apply_chat_template``, ``skip_malformed``); ``processor``
        encodes rows with media; ``label_keys`` (required columns) are kept in each pair's
        ``labels`` (a multi-head reward model's labels, ``rewards/heads.py``)."""
        keys = (config.input_key, config.chosen_key, config.rejected_key, *label_keys)
        result = read_rows(source, required_keys=keys, skip_malformed=config.skip_malformed)
        dataset = cls(
            result.rows,
            tokenizer,
            input_key=config.input_key,
            chosen_key=config.chosen_key,
            rejected_key=config.rejected_key,
            system_prompt=config.system_prompt,
            apply_chat_template=config.apply_chat_template,
            max_length=max_length,
            source=str(source),
            image_key=config.image_key,
            audio_key=config.audio_key,
            max_audio_seconds=config.max_audio_seconds,
            locations=result.locations,
            processor=processor,
            base_dir=source_folder(source),
            skip_malformed=config.skip_malformed,
            label_keys=label_keys,
        )
        dataset.num_skipped += result.skipped
        return dataset

    def __len__(self) -> int:
        return len(self.pairs)

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...
    @overload
    def __getitem__(self, index: slice) -> list[PreferencePair]: ...
    def __getitem__(self, index: int | slice) -> PreferencePair | list[PreferencePair]:
        return self.pairs[index]


def _text_pair(
    row: Mapping[str, Any],
    tokenizer: Any,
    where: str,
    encoder: PromptEncoder,
    chosen_key: str,
    rejected_key: str,
) -> PreferencePair:
    """A text model's pair: the prompt formatted with the tokenizer; media refused."""
    image = has_images(row, input_key=encoder.input_key, image_key=encoder.image_key)
    if image:
        raise DataError(
            f"{where}: {image}: reward-model pairs with images need a vision-language model "
            "(model.name naming a vision-language actor, whose folder holds its processor); "
            "this model reads text only: remove the images or change the model"
        )
    audio = has_audio(row, input_key=encoder.input_key, audio_key=encoder.audio_key)
    if audio:
        raise DataError(
            f"{where}: {audio}: reward-model pairs with audio need an audio-language model "
            "(model.name naming an audio-language actor, whose folder holds its processor); "
            "this model reads text only: remove the audio or change the model"
        )
    prompt = format_prompt(
        tokenizer,
        row[encoder.input_key],
        system_prompt=encoder.system_prompt,
        apply_chat_template=encoder.apply_chat_template,
    )
    return PreferencePair(prompt + str(row[chosen_key]), prompt + str(row[rejected_key]))
