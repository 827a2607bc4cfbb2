"""vLLM's Qwen2-Audio with a name mapper for transformers 5 weights (imports vllm).

vLLM 0.32's ``Qwen2AudioForConditionalGeneration`` loads transformers 4's weight names only
(``language_model.model.*``, ``audio_tower.*``, ``language_model.lm_head.*``). transformers 5
names the modules ``model.language_model.*``, ``model.audio_tower.*``,
``model.multi_modal_projector.*`` and ``lm_head.*`` (what ``update_weights`` streams), and its
``save_pretrained`` writes the decoder as ``language_model.model.model.*`` (its conversion
applied twice; transformers reads it back). The subclass here maps both to vLLM's names
(transformers 4 names pass unchanged) in ``load_weights``, which serves the first load and
every ``reload_weights``; ``register`` puts it in vLLM's model registry under the
architecture name, in place of vLLM's own class (same processor, same modules). The engine
calls it before starting vLLM; it is also this package's ``vllm.general_plugins`` entry
point, which vLLM runs in every process it starts (a spawned engine core included).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm import ModelRegistry
from vllm.model_executor.models.qwen2_audio import (
    Qwen2AudioForConditionalGeneration as VLLMQwen2Audio,
)
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

#: transformers 5 prefix -> the module path of vLLM's class, applied in this order.
TRANSFORMERS5_PREFIXES = {
    "language_model.model.model.": "language_model.model.",  # a transformers 5 folder
    "model.language_model.": "language_model.model.",
    "model.audio_tower.": "audio_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}


class Qwen2AudioForConditionalGeneration(VLLMQwen2Audio):
    """vLLM's Qwen2-Audio, loading transformers 5 weight names as well as transformers 4's."""

    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix=TRANSFORMERS5_PREFIXES)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


def register() -> None:
    """Make vLLM build this class for Qwen2-Audio folders (idempotent)."""
    ModelRegistry.register_model(VLLMQwen2Audio.__name__, Qwen2AudioForConditionalGeneration)
