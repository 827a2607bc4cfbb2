"""Built-in actors: ``language`` (any Hugging Face causal LM) and its tensor helpers."""

from .language import ActorLanguage, find_lora_target_modules
from .logprobs import chunked_token_log_probs, log_probs_from_logits
from .options import resolve_attn_implementation
from .packing import PackedBatch, PackedSpan, pack_sequences, packed_causal_mask, unpack_per_token

__all__ = [
    "ActorLanguage",
    "PackedBatch",
    "PackedSpan",
    "chunked_token_log_probs",
    "find_lora_target_modules",
    "log_probs_from_logits",
    "pack_sequences",
    "packed_causal_mask",
    "resolve_attn_implementation",
    "unpack_per_token",
]
