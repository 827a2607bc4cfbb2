"""The patch ``qwen2_audio_position_embedding``: what it fixes (the encoder's position table
in an FSDP2 shard unit of its own), that it changes nothing else, and that ``revert()``
restores transformers' encoder exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from lightrft_core import distributed
from lightrft_core.testing import PatchConformance
from lightrft_plugin_qwen_audio.position_embedding import AudioPositionEmbeddingPatch
from lightrft_plugin_qwen_audio.tiny import FRAMES, N_MELS


@pytest.fixture
def patch() -> Iterator[AudioPositionEmbeddingPatch]:
    """The patch, reverted for the test; the process's patch state restored after it (the
    ``qwen_audio`` actor applies it)."""
    patch = AudioPositionEmbeddingPatch(AudioPositionEmbeddingPatch.Config())
    was_applied = AudioPositionEmbeddingPatch.is_applied()
    patch.revert()
    yield patch
    if was_applied:
        patch.apply()
    else:
        patch.revert()


@pytest.fixture(scope="module")
def encoder(tiny_qwen_audio_dir: Path) -> Any:
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_qwen_audio_dir)
    return model.model.audio_tower.eval()


def _features() -> torch.Tensor:
    return torch.randn(2, N_MELS, FRAMES, generator=torch.Generator().manual_seed(0))


def test_apply_changes_the_forward_and_revert_restores_it(
    patch: AudioPositionEmbeddingPatch, encoder: Any
) -> None:
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    original = Qwen2AudioEncoder.forward
    x = _features()
    with torch.no_grad():
        before = encoder(x, output_hidden_states=True)
        patch.apply()
        assert Qwen2AudioEncoder.forward is not original
        calls: list[torch.Tensor] = []
        hook = encoder.embed_positions.register_forward_hook(lambda m, i, o: calls.append(i[0]))
        patched = encoder(x, output_hidden_states=True)
        hook.remove()
        patch.revert()
        assert Qwen2AudioEncoder.forward is original
        after = encoder(x, output_hidden_states=True)
    # the patched encoder looks its 100 positions up through the module, in order
    assert len(calls) == 1 and calls[0].tolist() == list(range(FRAMES // 2))
    for out in (patched, after):
        assert torch.equal(out.last_hidden_state, before.last_hidden_state)
        assert len(out.hidden_states) == len(before.hidden_states) == 3  # embeddings + 2 layers
        assert all(
            torch.equal(a, b) for a, b in zip(out.hidden_states, before.hidden_states, strict=True)
        )


def test_the_patched_encoder_refuses_features_of_another_length(
    patch: AudioPositionEmbeddingPatch, encoder: Any
) -> None:
    patch.apply()
    with pytest.raises(ValueError, match=f"exactly {FRAMES} frames, got 150"):
        encoder(torch.zeros(1, N_MELS, 150))


@pytest.fixture
def group_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A gloo process group of one in this process, gone after the test."""
    assert not dist.is_initialized(), "another test left a process group behind"
    monkeypatch.delenv("RANK", raising=False)
    distributed.init_process_group("gloo", timeout_s=30)
    yield
    dist.destroy_process_group()


def test_it_makes_a_position_table_sharded_on_its_own_work(
    patch: AudioPositionEmbeddingPatch, encoder: Any, group_of_one: None
) -> None:
    """FSDP2 with the position table a unit of its own: transformers' direct weight read
    meets the shard (a DTensor) and fails; the patched encoder gives the unsharded output."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    x = _features()
    with torch.no_grad():
        expected = encoder(x).last_hidden_state
    sharded = copy.deepcopy(encoder)
    mesh = init_device_mesh("cpu", (1,))
    fully_shard(sharded.embed_positions, mesh=mesh)
    for layer in sharded.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
            sharded(x)
        patch.apply()
        got = sharded(x).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-6)


class TestPatchConformance(PatchConformance):
    patch_cls = AudioPositionEmbeddingPatch

    @pytest.fixture(autouse=True)
    def _restore(self, patch: AudioPositionEmbeddingPatch) -> None:
        """Put the process's patch state back after the idempotence checks."""
