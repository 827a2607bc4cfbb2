"""Weight-sync methods mixed into vLLM's worker (engine argument ``worker_extension_cls``).

vLLM adds this class to its worker's bases in whichever process the worker runs, so
``llm.collective_rpc("reload_weights_bytes", args=(data,))`` calls a method by name: no
pickled function travels, and ``VLLM_ALLOW_INSECURE_SERIALIZATION`` stays off. This module
must not import vllm (the engine core imports it by its qualified name).
"""

from __future__ import annotations

from typing import Any

import torch

from .convert import bucket_from_bytes

#: The ``worker_extension_cls`` engine argument naming this class.
QUALNAME = "lightrft_plugin_vllm.worker_extension.WeightSyncExtension"


class WeightSyncExtension:
    """Reloads one bucket of checkpoint-format tensors (Hugging Face names) through the
    model runner's ``reload_weights``, which re-runs vLLM's own weight processing."""

    model_runner: Any  # provided by vLLM's worker

    def reload_weights_tensors(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """Engine in the trainer's process: the tensors arrive by reference."""
        self.model_runner.reload_weights(weights_iterator=iter(bucket))

    def reload_weights_bytes(self, data: bytes) -> None:
        """Engine core in its own process: the bucket arrives as safetensors bytes."""
        self.model_runner.reload_weights(weights_iterator=iter(bucket_from_bytes(data)))
