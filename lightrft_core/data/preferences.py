"""Reward-model data: a prompt with a preferred (``chosen``) and a dispreferred
(``rejected``) response. Each side becomes the text a reward model scores in RL: the prompt
formatted as the policy sees it, followed by the response.

Rows with images are refused: the reward model (``AutoModelForSequenceClassification``)
reads text, and transformers has no sequence-classification head for the vision-language
models LightRFT trains (docs/multimodal.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from .encoding import format_prompt
from .media import has_images
from .rows import DataError, read_rows, row_problem

logger = logging.getLogger("lightrft.data")


@dataclass
class PreferencePair:
    chosen: str  # prompt + chosen response
    rejected: str  # prompt + rejected response


class PreferenceDataset(Sequence[PreferencePair]):
    """Preference pairs; a pair whose longer side exceeds ``max_length`` tokens is dropped
    and counted in ``num_filtered``."""

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
        locations: Sequence[str] | None = None,
    ) -> None:
        self.pairs: list[PreferencePair] = []
        self.num_filtered = 0
        self.num_skipped = 0
        for index, row in enumerate(rows):
            where = locations[index] if locations else f"{source}: row {index}"
            problem = row_problem(row, (input_key, chosen_key, rejected_key), what="a mapping")
            if problem:
                raise DataError(f"{where}: {problem}")
            image = has_images(row, input_key=input_key, image_key=image_key)
            if image:
                raise DataError(
                    f"{where}: {image}: reward-model pairs with images are not supported: the "
                    "reward model is a sequence classifier, which reads text only; remove the "
                    "images (or train on text-only pairs)"
                )
            prompt = format_prompt(
                tokenizer,
                row[input_key],
                system_prompt=system_prompt,
                apply_chat_template=apply_chat_template,
            )
            pair = PreferencePair(prompt + str(row[chosen_key]), prompt + str(row[rejected_key]))
            if max_length is not None:
                longest = max(len(tokenizer(text)["input_ids"]) for text in vars(pair).values())
                if longest > max_length:
                    self.num_filtered += 1
                    continue
            self.pairs.append(pair)
        if self.num_filtered:
            logger.info(
                "%s: dropped %d pair(s) longer than %s tokens",
                source,
                self.num_filtered,
                max_length,
            )
        if not self.pairs:
            raise DataError(
                f"{source}: no preference pairs left (all {self.num_filtered} are longer than "
                f"max_length={max_length} tokens)"
            )

    @classmethod
    def from_source(
        cls, source: str, tokenizer: Any, config: Any, *, max_length: int | None = None
    ) -> PreferenceDataset:
        """Read ``source`` with the options of a ``DataConfig`` (``input_key``,
        ``chosen_key``, ``rejected_key``, ``image_key``, ``system_prompt``,
        ``apply_chat_template``, ``skip_malformed``)."""
        keys = (config.input_key, config.chosen_key, config.rejected_key)
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
            locations=result.locations,
        )
        dataset.num_skipped = result.skipped
        return dataset

    def __len__(self) -> int:
        return len(self.pairs)

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...
    @overload
    def __getitem__(self, index: slice) -> list[PreferencePair]: ...
    def __getitem__(self, index: int | slice) -> PreferencePair | list[PreferencePair]:
        return self.pairs[index]
