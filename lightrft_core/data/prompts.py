"""Prompt datasets for RL: formatting, tokenising, length filtering, and a resumable sampler."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from ..interfaces.multimodal import MultiModalInputs
from .encoding import MalformedRows, PromptEncoder, encode_prompt, format_prompt, has_chat_template
from .media import RowProblem
from .rows import DataError, read_rows, row_problem, source_folder

__all__ = [
    "PromptDataset",
    "PromptItem",
    "PromptSampler",
    "encode_prompt",
    "format_prompt",
    "has_chat_template",
]

logger = logging.getLogger("lightrft.data")


@dataclass
class PromptItem:
    """One prompt: the formatted text, its token ids, the label and the other fields.
    ``multimodal``: its media (``None`` for a text-only prompt); ``prompt_ids`` are then the
    processor's, image and audio placeholders expanded."""

    prompt_text: str
    prompt_ids: list[int]
    label: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    multimodal: MultiModalInputs | None = None


class PromptDataset(Sequence[PromptItem]):
    """Formatted, tokenised prompts; those over ``max_prompt_length`` tokens are dropped.

    Rows may carry images and audio (``data.image_key`` / ``data.audio_key`` columns or
    media parts of chat messages): they are encoded by ``processor``, the model's
    ``AutoProcessor`` (see ``encoding.PromptEncoder``). ``locations``: where each row is
    (``file:line``), for errors; ``base_dir``: the folder relative media paths are relative
    to.

    ``num_filtered`` counts the dropped prompts, ``num_skipped`` the malformed rows skipped
    (``skip_malformed``: while reading, see ``from_source``, and rows with unusable media).
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        tokenizer: Any,
        *,
        input_key: str = "prompt",
        label_key: str | None = "answer",
        system_prompt: str | None = None,
        apply_chat_template: bool = True,
        max_prompt_length: int | None = 512,
        source: str = "rows",
        processor: Any = None,
        image_key: str = "images",
        audio_key: str = "audios",
        max_audio_seconds: float | None = 30.0,
        base_dir: Path | None = None,
        locations: Sequence[str] | None = None,
        skip_malformed: bool = False,
        max_dropped_fraction: float = 0.5,
    ) -> None:
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
        self.items: list[PromptItem] = []
        self.num_filtered = 0
        for index, row in enumerate(rows):
            where = locations[index] if locations else f"{source}: row {index}"
            problem = row_problem(row, (input_key,), what="a mapping")
            if problem:
                raise DataError(f"{where}: {problem}")
            try:
                prompt = encoder.encode(row)
            except RowProblem as exc:
                malformed.report(where, exc)
                continue
            if max_prompt_length is not None and len(prompt.ids) > max_prompt_length:
                self.num_filtered += 1
                continue
            label = row.get(label_key) if label_key else None
            own_keys = (input_key, label_key, image_key, audio_key)
            metadata = {k: v for k, v in row.items() if k not in own_keys}
            item = PromptItem(prompt.text, prompt.ids, label, metadata, prompt.multimodal)
            self.items.append(item)
        malformed.log()
        self.num_skipped = malformed.count
        if self.num_filtered:
            logger.warning(
                "%s: dropped %d of %d prompt(s), longer than data.max_prompt_length=%s tokens",
                source,
                self.num_filtered,
                self.num_filtered + len(self.items),
                max_prompt_length,
            )
        if not self.items:
            limit = f"max_prompt_length={max_prompt_length} tokens"
            detail = f"all {self.num_filtered} are longer than {limit}"
            if self.num_skipped:
                detail = f"{self.num_skipped} malformed, {self.num_filtered} longer than {limit}"
            advice = "fix the rows or " if self.num_skipped else ""
            raise DataError(
                f"{source}: no prompts left: {detail}; {advice}raise data.max_prompt_length"
            )
        dropped = self.num_filtered / (self.num_filtered + len(self.items))
        if dropped > max_dropped_fraction:
            raise DataError(
                f"{source}: {self.num_filtered} of {self.num_filtered + len(self.items)} prompts "
                f"({dropped:.0%}) are longer than data.max_prompt_length={max_prompt_length} "
                f"tokens, more than data.max_dropped_fraction={max_dropped_fraction}; raise "
                "data.max_prompt_length, or data.max_dropped_fraction to train on the rest"
            )

    @classmethod
    def from_source(
        cls,
        source: str,
        tokenizer: Any,
        config: Any,
        *,
        require_label: bool = True,
        processor: Any = None,
    ) -> PromptDataset:
        """Read ``source`` with the options of a ``DataConfig`` (``input_key``, ``label_key``,
        ``image_key``, ``audio_key``, ``max_audio_seconds``, ``system_prompt``,
        ``apply_chat_template``, ``max_prompt_length``, ``skip_malformed``); ``processor``
        encodes rows with media.

        ``require_label``: every row must have a non-empty ``label_key`` (rule rewards need
        one); otherwise a missing label is ``None``.
        """
        keys = (config.input_key, config.label_key) if require_label else (config.input_key,)
        result = read_rows(source, required_keys=keys, skip_malformed=config.skip_malformed)
        if require_label:
            check_labels(result.rows, result.locations, config.label_key)
        dataset = cls(
            result.rows,
            tokenizer,
            input_key=config.input_key,
            label_key=config.label_key,
            system_prompt=config.system_prompt,
            apply_chat_template=config.apply_chat_template,
            max_prompt_length=config.max_prompt_length,
            source=str(source),
            processor=processor,
            image_key=config.image_key,
            audio_key=config.audio_key,
            max_audio_seconds=config.max_audio_seconds,
            base_dir=source_folder(source),
            locations=result.locations,
            skip_malformed=config.skip_malformed,
            max_dropped_fraction=config.max_dropped_fraction,
        )
        dataset.num_skipped += result.skipped
        return dataset

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> PromptItem: ...
    @overload
    def __getitem__(self, index: slice) -> list[PromptItem]: ...
    def __getitem__(self, index: int | slice) -> PromptItem | list[PromptItem]:
        return self.items[index]


def check_labels(
    rows: Sequence[Mapping[str, Any]], locations: Sequence[str], label_key: str
) -> None:
    """Refuse a label a reward cannot compare a response with: it must be text, a number,
    or a list of them (any item accepted); a mapping or a boolean never matches."""
    for row, where in zip(rows, locations, strict=True):
        label = row.get(label_key)
        items = label if isinstance(label, list) else [label]
        if not all(_is_plain_label(item) for item in items):
            raise DataError(
                f"{where}: {label_key!r} must be text, a number or a list of them (the reward "
                f"compares the response with it), got {type(label).__name__} {label!r}; fix "
                "the row, or set data.label_key to the field holding the answer"
            )


def _is_plain_label(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


class PromptSampler(Iterator[list[Any]]):
    """Endless batches of ``batch_size`` items, reshuffled every epoch, resumable exactly.

    Epoch ``e`` visits the items in the order ``permutation(seed, e)``; a batch that crosses
    the end of an epoch is completed from the next one. With ``world_size > 1`` every rank
    gets its contiguous slice of each global batch (``batch_size`` is the global size).
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot sample from an empty dataset")
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be positive and divisible by the number of "
                f"processes ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    def next_indices(self) -> list[int]:
        """Dataset indices of this rank's share of the next global batch."""
        indices: list[int] = []
        while len(indices) < self.batch_size:
            take = min(self.batch_size - len(indices), len(self._order) - self.position)
            indices += self._order[self.position : self.position + take]
            self.position += take
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        share = self.batch_size // self.world_size
        return indices[self.rank * share : (self.rank + 1) * share]

    def __next__(self) -> list[Any]:
        return [self.dataset[i] for i in self.next_indices()]

    def state_dict(self) -> dict[str, int]:
        """Where the sampler is: enough to continue with exactly the same batches."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": len(self.dataset),
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a ``state_dict()``; the dataset must have the same size."""
        if state.get("num_items", len(self.dataset)) != len(self.dataset):
            raise ValueError(
                f"the saved data position is for {state['num_items']} prompts but the dataset "
                f"has {len(self.dataset)}; resuming needs the same data and filters"
            )
        position = int(state["position"])
        if not 0 <= position < len(self.dataset):
            raise ValueError(f"saved data position {position} is outside the dataset")
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.position = position
        self._order = self._permutation(self.epoch)
