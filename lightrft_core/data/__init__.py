"""Datasets: rows from files or ``datasets`` sources, RL prompts, SFT pairs."""

from __future__ import annotations

from .prompts import PromptDataset, PromptItem, PromptSampler, format_prompt
from .rows import DataError, RowsResult, read_rows
from .sft import SFTDataset, SFTItem, collate

__all__ = [
    "DataError",
    "PromptDataset",
    "PromptItem",
    "PromptSampler",
    "RowsResult",
    "SFTDataset",
    "SFTItem",
    "collate",
    "format_prompt",
    "read_rows",
]
