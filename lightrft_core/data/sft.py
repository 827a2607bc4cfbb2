"""Supervised fine-tuning data: prompt + response + EOS, with the loss on the response only."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch

from ..interfaces.multimodal import MultiModalInputs
from .encoding import MalformedRows, PromptEncoder
from .media import RowProblem
from .rows import DataError, read_rows, row_problem, source_folder

logger = logging.getLogger("lightrft.data")


@dataclass
class SFTItem:
    """``input_ids`` = prompt + response + EOS; ``loss_mask`` is 1 on response and EOS tokens;
    ``multimodal``: the prompt's media (``None`` for a text-only row)."""

    input_ids: list[int]
    loss_mask: list[int]
    prompt_text: str
    response_text: str
    multimodal: MultiModalInputs | None = None


class SFTDataset(Sequence[SFTItem]):
    """Prompt/response pairs tokenised for training; prompts use the same formatting (and
    image and audio encoding, with ``processor``) as RL -- see ``PromptDataset`` for the options.

    Samples longer than ``max_length`` tokens are dropped and counted in ``num_filtered``,
    malformed rows skipped (``skip_malformed``) in ``num_skipped``.
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        tokenizer: Any,
        *,
        input_key: str = "prompt",
        response_key: str = "response",
        system_prompt: str | None = None,
        apply_chat_template: bool = True,
        max_length: int | None = None,
        source: str = "rows",
        processor: Any = None,
        image_key: str = "images",
        audio_key: str = "audios",
        max_audio_seconds: float | None = 30.0,
        base_dir: Path | None = None,
        locations: Sequence[str] | None = None,
        skip_malformed: bool = False,
    ) -> None:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token; SFT needs one to end responses")
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
        self.items: list[SFTItem] = []
        self.num_filtered = 0
        for index, row in enumerate(rows):
            where = locations[index] if locations else f"{source}: row {index}"
            problem = row_problem(row, (input_key, response_key), what="a mapping")
            if problem:
                raise DataError(f"{where}: {problem}")
            try:
                prompt = encoder.encode(row)
            except RowProblem as exc:
                malformed.report(where, exc)
                continue
            response = str(row[response_key])
            response_ids = [*tokenizer.encode(response, add_special_tokens=False), eos]
            if max_length is not None and len(prompt.ids) + len(response_ids) > max_length:
                self.num_filtered += 1
                continue
            self.items.append(
                SFTItem(
                    input_ids=prompt.ids + response_ids,
                    loss_mask=[0] * len(prompt.ids) + [1] * len(response_ids),
                    prompt_text=prompt.text,
                    response_text=response,
                    multimodal=prompt.multimodal,
                )
            )
        malformed.log()
        self.num_skipped = malformed.count
        if self.num_filtered:
            logger.info(
                "%s: dropped %d sample(s) longer than %s tokens",
                source,
                self.num_filtered,
                max_length,
            )
        if not self.items:
            limit = f"max_length={max_length} tokens"
            detail = f"all {self.num_filtered} are longer than {limit}"
            if self.num_skipped:
                detail = f"{self.num_skipped} malformed, {self.num_filtered} longer than {limit}"
            raise DataError(f"{source}: no samples left: {detail}")

    @classmethod
    def from_source(
        cls,
        source: str,
        tokenizer: Any,
        config: Any,
        *,
        response_key: str = "response",
        max_length: int | None = None,
        processor: Any = None,
    ) -> SFTDataset:
        """Read ``source`` with the options of a ``DataConfig`` (``input_key``, ``image_key``,
        ``audio_key``, ``max_audio_seconds``, ``system_prompt``, ``apply_chat_template``,
        ``skip_malformed``); ``processor`` encodes rows with media."""
        result = read_rows(
            source,
            required_keys=(config.input_key, response_key),
            skip_malformed=config.skip_malformed,
        )
        dataset = cls(
            result.rows,
            tokenizer,
            input_key=config.input_key,
            response_key=response_key,
            system_prompt=config.system_prompt,
            apply_chat_template=config.apply_chat_template,
            max_length=max_length,
            source=str(source),
            processor=processor,
            image_key=config.image_key,
            audio_key=config.audio_key,
            max_audio_seconds=config.max_audio_seconds,
            base_dir=source_folder(source),
            locations=result.locations,
            skip_malformed=config.skip_malformed,
        )
        dataset.num_skipped += result.skipped
        return dataset

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> SFTItem: ...
    @overload
    def __getitem__(self, index: slice) -> list[SFTItem]: ...
    def __getitem__(self, index: int | slice) -> SFTItem | list[SFTItem]:
        return self.items[index]


def collate(items: Sequence[SFTItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids`` ``[B, T]`` long, ``attention_mask`` ``[B, T]`` long,
    ``loss_mask`` ``[B, T]`` bool (``True`` where token ``t`` is a target: the loss of the
    prediction made at ``t - 1``)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    loss_mask = torch.zeros((len(items), length), dtype=torch.bool)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(item.loss_mask, dtype=torch.bool)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
