"""The ``hf`` engine with image prompts (a tiny Qwen2-VL): seeded sampling, log-probs equal
to a full forward of each sample, before and after a weight change, and an own copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lightrft_core.data.encoding import EncodedPrompt, PromptEncoder
from lightrft_core.engines import HFEngine
from lightrft_core.engines.hf import modality_token_types, placeholder_ids
from lightrft_core.interfaces import GenerationOutput, SamplingParams

pytest.importorskip("lightrft_plugin_qwen_vl")


@pytest.fixture(scope="module")
def vl(tiny_qwen_vl_dir: Path) -> tuple[Any, Any]:
    """The tiny Qwen2-VL (fp32, eval) and its tokenizer."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_vl_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_qwen_vl_dir)


@pytest.fixture(scope="module")
def prompts(tiny_qwen_vl_dir: Path, vl: tuple[Any, Any]) -> list[EncodedPrompt]:
    """Two image prompts (1 and 4 image tokens), a text-only one, one with two images."""
    from lightrft_plugin_qwen_vl.processing import load_processor

    encoder = PromptEncoder(vl[1], processor=load_processor(tiny_qwen_vl_dir))
    red = Image.new("RGB", (28, 28), (220, 20, 20))
    blue = Image.new("RGB", (56, 56), (20, 20, 220))
    rows = [
        {"prompt": "colour?", "images": [red]},
        {"prompt": "what is in the picture", "images": [blue]},
        {"prompt": "say hi"},
        {"prompt": [{"role": "user", "content": "two:"}], "images": [blue, red]},
    ]
    return [encoder.encode(row) for row in rows]


def naive_log_probs(model: Any, prompt: EncodedPrompt, response: list[int]) -> torch.Tensor:
    """Log-probs of ``response`` after ``prompt``: one unpadded forward in which the model
    computes its own positions from the media."""
    ids = torch.tensor([prompt.ids + response])
    media: dict[str, Any] = {}
    if prompt.multimodal is not None:
        media = {**prompt.multimodal.tensors}
        media["mm_token_type_ids"] = modality_token_types(model.config, ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **media).logits[0]
    log_probs = torch.log_softmax(logits[len(prompt.ids) - 1 : -1].float(), dim=-1)
    return log_probs.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def generate(engine: HFEngine, prompts: list[EncodedPrompt], **params: Any) -> Any:
    sampling = SamplingParams(max_new_tokens=6, **params)
    return engine.generate(
        [p.ids for p in prompts], sampling, multimodal=[p.multimodal for p in prompts]
    )


def assert_matches_naive(
    model: Any, prompts: list[EncodedPrompt], outputs: list[GenerationOutput]
) -> None:
    for out in outputs:
        expected = naive_log_probs(model, prompts[out.prompt_index], out.token_ids)
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4), out


def test_image_prompts_sample_reproducibly_with_full_forward_log_probs(
    vl: tuple[Any, Any], prompts: list[EncodedPrompt]
) -> None:
    model, tokenizer = vl
    engine = HFEngine()
    engine.setup(model=model, tokenizer=tokenizer)
    assert engine.supports_multimodal
    first = generate(engine, prompts, n=2, temperature=1.0, seed=5)
    again = generate(engine, prompts, n=2, temperature=1.0, seed=5)
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    assert [o.prompt_index for o in first] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(o.prompt_token_ids is None for o in first)  # generated from the given ids
    placeholders = set(placeholder_ids(model.config))
    assert placeholders  # the image and video pads: never sampled
    assert not any(placeholders & set(o.token_ids) for o in first)
    assert_matches_naive(model, prompts, first)


def test_media_change_the_answer_and_batching_does_not(
    vl: tuple[Any, Any], prompts: list[EncodedPrompt]
) -> None:
    model, tokenizer = vl
    engine = HFEngine(HFEngine.Config(max_batch_size=1))
    engine.setup(model=model, tokenizer=tokenizer)
    one_by_one = generate(engine, prompts, temperature=0.0)
    engine.config.max_batch_size = 8
    batched = generate(engine, prompts, temperature=0.0)
    for single, together in zip(one_by_one, batched, strict=True):
        assert single.token_ids == together.token_ids
        assert torch.allclose(
            torch.tensor(single.log_probs), torch.tensor(together.log_probs), atol=1e-4
        )
    other_image = prompts[1].multimodal
    assert other_image is not None
    swapped = EncodedPrompt(prompts[1].text, prompts[1].ids, other_image)
    swapped.multimodal = type(other_image)(tensors={**other_image.tensors})
    swapped.multimodal.tensors["pixel_values"] = other_image.tensors["pixel_values"] * -1.0
    changed = generate(engine, [swapped], temperature=0.0)
    assert not torch.allclose(
        torch.tensor(changed[0].log_probs), torch.tensor(batched[1].log_probs)
    )


def test_log_probs_follow_a_weight_change_shared_and_own_copy(
    tiny_qwen_vl_dir: Path, prompts: list[EncodedPrompt]
) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_vl_dir).eval()
    shared = HFEngine()
    shared.setup(model=model, tokenizer=tokenizer)
    own = HFEngine()
    own.setup(model_path=str(tiny_qwen_vl_dir), tokenizer=tokenizer)
    assert not own.shares_model
    with torch.no_grad():  # a "training update" touching the vision tower and the decoder
        for name, param in model.named_parameters():
            if "visual" in name or "layers.0" in name:
                param.add_(
                    0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1))
                )
    own.update_weights(model.state_dict().items())
    after_shared = generate(shared, prompts, n=2, temperature=1.0, seed=9)
    after_own = generate(own, prompts, n=2, temperature=1.0, seed=9)
    assert [o.token_ids for o in after_shared] == [o.token_ids for o in after_own]
    assert_matches_naive(model, prompts, after_shared)
    assert_matches_naive(model, prompts, after_own)


def test_one_media_entry_per_prompt(vl: tuple[Any, Any], prompts: list[EncodedPrompt]) -> None:
    engine = HFEngine()
    engine.setup(model=vl[0], tokenizer=vl[1])
    with pytest.raises(ValueError, match="multimodal has 1 entries for 2 prompts"):
        engine.generate(
            [prompts[0].ids, prompts[2].ids], SamplingParams(), multimodal=[prompts[0].multimodal]
        )
