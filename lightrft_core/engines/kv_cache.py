"""A key/value cache whose full-attention layers are allocated once per batch.

transformers' ``DynamicLayer`` concatenates every step (``torch.cat`` of the whole cache,
per layer, per token). ``PreallocatedLayer`` allocates ``[B, H, capacity, D]`` at the
prefill and writes each step's keys and values in place; attention reads the filled part
as a view. Dropping finished rows moves the kept rows' filled part to the front rows of the
same buffers (no new allocation); copying each prompt's prefilled positions to the rows of
its samples gathers them into buffers of the whole batch. Layers of other kinds (sliding
windows, linear attention) stay as transformers builds them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer with room for ``capacity`` positions."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.key_buffer = torch.empty(0)
        self.value_buffer = torch.empty(0)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, key_dim = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_dim))
        self.value_buffer = value_states.new_empty(
            (batch, heads, self.capacity, value_states.shape[-1])
        )
        self.length = 0
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions, room for {self.capacity}")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``. Finished rows dropped from the batch: in place, the
        filled positions of the kept rows move to the front rows of the buffers, which then
        become views of those rows (no new allocation, the empty part is not copied). More
        rows than the buffers hold (a prompt's cache copied to each of its samples): new
        buffers of that many rows, their filled part gathered."""
        if not self.is_initialized:
            return
        rows, filled = indices.shape[0], slice(0, self.length)
        if rows > self.key_buffer.shape[0]:
            self.key_buffer, self.value_buffer = (
                gathered_rows(buffer, indices, self.length)
                for buffer in (self.key_buffer, self.value_buffer)
            )
        else:
            for buffer in (self.key_buffer, self.value_buffer):
                buffer[:rows, :, filled] = buffer[indices, :, filled]
            self.key_buffer, self.value_buffer = self.key_buffer[:rows], self.value_buffer[:rows]
        self.keys = self.key_buffer[:, :, filled]
        self.values = self.value_buffer[:, :, filled]


def gathered_rows(buffer: torch.Tensor, indices: torch.Tensor, length: int) -> torch.Tensor:
    """A new buffer like ``buffer`` [B, H, capacity, D] with the rows ``indices`` (repeats
    allowed), of which the first ``length`` positions are filled."""
    out = buffer.new_empty((indices.shape[0], *buffer.shape[1:]))
    out[:, :, :length] = buffer[indices, :, :length]
    return out


def preallocated_cache(config: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for a model of ``config`` whose full-attention layers are
    ``PreallocatedLayer``\\ s of ``capacity`` positions (the prompt width plus the new tokens)."""
    cache = DynamicCache(config=config)
    cache.layers = [
        PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
        for layer in cache.layers
    ]
    return cache
