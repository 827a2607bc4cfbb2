"""Tiny Qwen2-architecture models and a byte-level tokenizer, built locally.

Used by the demo and the tests: no download, deterministic from a seed. The tokenizer is a
byte-level BPE with no merges -- token id = byte value (0..255) -- plus ``<|endoftext|>``,
``<|im_start|>`` and ``<|im_end|>`` and a ChatML chat template; it round-trips any text
exactly and loads under the Qwen2 and Llama tokenizer classes alike.

The plugins' tiny media models build on it: the byte tokenizer with their media tokens and a
ChatML template whose content parts render as placeholders (``chatml_media_template``), a
small text decoder (``tiny_text_config``), and the folder written by ``save_tiny``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


#: The text decoder of the tiny media models: hidden 64, one head of 64 (vLLM needs
#: head_dim >= 64), 2 layers.
TINY_DECODER: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "max_position_embeddings": 2048,
}


def chatml_media_template(parts: Mapping[str, str]) -> str:
    """ChatML whose message content is a string or a list of parts: a ``{"type": T}`` part
    renders as ``parts[T]`` (media placeholders, which the processor expands), a
    ``{"type": "text"}`` part as its text. The generation prompt is
    ``<|im_start|>assistant\n``."""
    branches = "".join(
        f"{{% {'if' if i == 0 else 'elif'} part['type'] == '{kind}' %}}{{{{ '{text}' }}}}"
        for i, (kind, text) in enumerate(parts.items())
    )
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{branches}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def tiny_text_config(tokenizer: Any, **fields: Any) -> dict[str, Any]:
    """The text config of a tiny media model: ``TINY_DECODER`` over ``tokenizer``'s
    vocabulary (no BOS; EOS ``<|im_end|>``, its pad token), then ``fields``."""
    return {
        **TINY_DECODER,
        "vocab_size": len(tokenizer),
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
        **fields,
    }


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


#: Named sizes (head_dim 64 everywhere: vLLM's CPU attention rejects smaller heads).
TINY_SIZES: dict[str, TinySize] = {
    "5m": TinySize(256, 704, 4, 4, 2),
    "30m": TinySize(512, 1408, 8, 8, 4),
}


def _byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map of byte-level BPE (GPT-2 style):
    printable bytes map to themselves, the others to characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def build_byte_tokenizer(
    extra_tokens: Sequence[str] = (), chat_template: str = CHATML_TEMPLATE
) -> Any:
    """A ``PreTrainedTokenizerFast``: ids 0..255 are bytes, then the special tokens, then
    ``extra_tokens`` (special, e.g. media placeholders), with ``chat_template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))  # ids 256, 257, 258 in this order
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens), special_tokens=True)
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(size: str = "5m", *, vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised ``Qwen2ForCausalLM`` of a named size (fp32, eager attention)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    shape = TINY_SIZES[size]
    fields = {
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    }
    config = Qwen2Config(vocab_size=vocab_size, **{**fields, **overrides})
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def build_tiny_checkpoint(
    path: str | Path, size: str = "5m", *, seed: int = 0, **overrides: Any
) -> Path:
    """Write a tiny model and its tokenizer as a Hugging Face folder; returns the path.
    ``overrides``: ``Qwen2Config`` fields that replace the size's (``num_hidden_layers=2``)."""
    path = Path(path)
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(size, vocab_size=len(tokenizer), seed=seed, **overrides)
    return save_tiny(path, model, tokenizer, tokenizer)


def save_tiny(path: str | Path, model: Any, files: Any, tokenizer: Any) -> Path:
    """Write ``model`` and its tokenizer or processor ``files`` to the folder ``path`` (the
    model generating until ``tokenizer``'s EOS, padding with its pad token); returns it."""
    path = Path(path)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    files.save_pretrained(path)
    return path
