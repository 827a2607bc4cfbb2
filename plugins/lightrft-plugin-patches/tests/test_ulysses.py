"""The ``ulysses_attention`` patch in this process: registration, ``apply``/``revert``
(idempotent, outputs unchanged, the original restored), the whole-sequence masks, the
``model.patches`` option, and the sequence-parallel forward on a one-rank group. The
two-rank equality with the unsplit model is in ``test_ulysses_distributed.py``."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.plugins import PluginManager, reset_plugin_manager
from lightrft_plugin_patches.sequence_parallel import (
    disable_sequence_parallel,
    enable_sequence_parallel,
    sequence_parallel_forward,
    whole_sequence_mask,
)
from lightrft_plugin_patches.ulysses import (
    PATCHED_MODULES,
    UlyssesAttention,
    UlyssesAttentionFunctions,
    is_patched,
)


def tiny_qwen2(attention: str = "sdpa") -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


@pytest.fixture
def unpatched() -> Iterator[None]:
    """Every test leaves the modeling modules as it found them."""
    yield
    UlyssesAttention().revert()


def test_the_plugin_registers_the_patch_without_applying_it() -> None:
    import lightrft_plugin_patches.plugin

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_patches.plugin, name="patches")
    assert manager.get_patch("ulysses_attention") is UlyssesAttention
    assert not any(is_patched(family) for family in PATCHED_MODULES)


@pytest.mark.usefixtures("unpatched")
def test_apply_and_revert_are_idempotent_and_restore_the_original() -> None:
    modules = [importlib.import_module(name) for name in PATCHED_MODULES.values()]
    originals = [module.ALL_ATTENTION_FUNCTIONS for module in modules]
    patch = UlyssesAttention()
    patch.revert()  # without apply: nothing
    assert [m.ALL_ATTENTION_FUNCTIONS for m in modules] == originals
    patch.apply()
    patch.apply()
    for module, original in zip(modules, originals, strict=True):
        wrapper = module.ALL_ATTENTION_FUNCTIONS
        assert isinstance(wrapper, UlyssesAttentionFunctions)
        assert wrapper.original is original  # one layer of wrapping, not two
    patch.revert()
    patch.revert()
    assert all(m.ALL_ATTENTION_FUNCTIONS is o for m, o in zip(modules, originals, strict=True))


@pytest.mark.usefixtures("unpatched")
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_outputs_are_identical_before_during_and_after_the_patch(attention: str) -> None:
    model = tiny_qwen2(attention).eval()
    tokens = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    mask[0, :2] = 0
    with torch.no_grad():
        before = model(input_ids=tokens, attention_mask=mask).logits
        UlyssesAttention(UlyssesAttention.Config(models=["qwen2"])).apply()
        during = model(input_ids=tokens, attention_mask=mask).logits  # no context: unchanged
        UlyssesAttention().revert()
        after = model(input_ids=tokens, attention_mask=mask).logits
    assert torch.equal(before, during)
    assert torch.equal(before, after)


def test_the_config_refuses_an_unknown_family() -> None:
    with pytest.raises(ValueError, match="not gpt2"):
        UlyssesAttention.Config(models=["gpt2"])


def test_whole_sequence_masks_by_hand() -> None:
    valid = torch.tensor([[False, True, True]])
    allowed = torch.tensor(
        [
            [True, False, False],  # padding query: itself only, so no row is empty
            [False, True, False],  # causal, padding key hidden
            [False, True, True],
        ]
    )
    sdpa = whole_sequence_mask(valid, "sdpa", torch.float32)
    assert sdpa is not None
    assert torch.equal(sdpa, allowed[None, None])
    eager = whole_sequence_mask(valid, "eager", torch.float32)
    minimum = torch.finfo(torch.float32).min
    assert eager is not None
    assert torch.equal(eager[0, 0], torch.where(allowed, 0.0, minimum))
    everything = torch.ones(2, 3, dtype=torch.bool)
    assert whole_sequence_mask(everything, "sdpa", torch.float32) is None  # is_causal
    assert whole_sequence_mask(everything, "flash_attention_2", torch.bfloat16) is None
    flash = whole_sequence_mask(valid, "flash_attention_2", torch.bfloat16)
    assert flash is not None
    assert flash.tolist() == [[0, 1, 1]]
    with pytest.raises(ValueError, match="flex_attention"):
        whole_sequence_mask(valid, "flex_attention", torch.float32)


@pytest.mark.usefixtures("unpatched")
def test_the_forward_refuses_to_run_unpatched() -> None:
    actor = ActorLanguage.from_model(tiny_qwen2())
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(RuntimeError, match="not patched"):
        sequence_parallel_forward(actor, tokens, torch.ones_like(tokens), group=None)


@pytest.mark.usefixtures("unpatched")
def test_model_patches_are_applied_by_the_actor() -> None:
    import lightrft_plugin_patches.plugin

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_patches.plugin, name="patches")
    reset_plugin_manager(manager)
    try:
        ActorLanguage.from_model(tiny_qwen2(), ActorLanguage.Config(patches=["ulysses_attention"]))
    finally:
        reset_plugin_manager(None)
    assert is_patched("qwen2") and is_patched("llama")
    with pytest.raises(ValueError, match="patches"):
        ActorLanguage.Config(patches=[""])


@pytest.mark.usefixtures("unpatched")
def test_a_one_rank_group_gives_the_actor_s_log_probs_and_entropy() -> None:
    """The split machinery (padding to the group, positions, masks, gathering) without
    torchrun: a group of one rank."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        actor = ActorLanguage.from_model(tiny_qwen2("eager"))
        tokens = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(tokens)
        mask[0, :2] = 0
        mask[1, -1] = 0
        expected = actor(tokens, mask, return_entropy=True)
        enable_sequence_parallel(actor, dist.group.WORLD)
        split = actor(tokens, mask, return_entropy=True)
        disable_sequence_parallel(actor)
        assert actor.forward == ActorLanguage.forward.__get__(actor)
    finally:
        if created:
            dist.destroy_process_group()
    torch.testing.assert_close(split.log_probs, expected.log_probs, rtol=0, atol=1e-5)
    assert expected.entropy is not None and split.entropy is not None
    torch.testing.assert_close(split.entropy, expected.entropy, rtol=0, atol=1e-5)
