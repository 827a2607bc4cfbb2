"""The core's critic model (``lightrft_core/models/critic.py``) on a real tiny Qwen2:
alignment with the actor's log-probs, padding, save/load, the folder format, and the trunk
options read from the actor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.models.critic import (
    CriticModel,
    TrunkOptions,
    ValueHead,
    is_critic_folder,
    trunk_options_of,
)


@pytest.fixture
def actor(fast_tiny_model_dir: Path) -> ActorLanguage:
    return ActorLanguage(ActorLanguage.Config(path=str(fast_tiny_model_dir)))


@pytest.fixture
def critic(fast_tiny_model_dir: Path) -> CriticModel:
    model = CriticModel.from_pretrained(fast_tiny_model_dir, init_std=0.5)
    return model.eval()


def _sequences() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sequences = torch.randint(0, 256, (2, 9), generator=g)
    mask = torch.ones_like(sequences)
    mask[1, 6:] = 0  # row 1 is right-padded after 6 tokens
    return sequences, mask


@torch.no_grad()
def test_value_at_an_action_is_the_value_of_the_state_before_it(
    critic: CriticModel, actor: ActorLanguage
) -> None:
    sequences, mask = _sequences()
    values = critic(sequences, mask)
    log_probs = actor(sequences, mask).log_probs
    assert values.shape == log_probs.shape == (2, 8)
    assert values.dtype == torch.float32
    # Change the token at position k = 5. The action scored at index t = k − 1 = 4 is that
    # token: its log-prob changes, but its value (the state before it: tokens ≤ 4) must not.
    # Values at indices ≥ 5 see the new token and change; values at indices < 4 do not.
    k = 5
    changed = sequences.clone()
    changed[:, k] = (changed[:, k] + 1) % 256
    new_values = critic(changed, mask)
    new_log_probs = actor(changed, mask).log_probs
    torch.testing.assert_close(new_values[:, :k], values[:, :k])
    assert (new_values[0, k:] - values[0, k:]).abs().min() > 0
    assert (new_log_probs[:, k - 1] - log_probs[:, k - 1]).abs().min() > 0
    torch.testing.assert_close(new_log_probs[:, : k - 1], log_probs[:, : k - 1])


@torch.no_grad()
def test_values_read_the_same_hidden_state_as_the_log_probs(actor: ActorLanguage) -> None:
    # With the actor's own trunk and a head equal to the output-embedding row of token v,
    # the value at t is the logit of v at position t; for rows whose next token is v the
    # log-prob at t is that logit minus the log-normaliser of the same position.
    trunk = actor.hf_model().get_decoder()
    head = ValueHead(64)
    v = 65
    head.linear.weight.copy_(actor.base_model.get_output_embeddings().weight[v : v + 1])
    critic = CriticModel(trunk, head).eval()
    sequences = torch.tensor([[10, 20, v, 30, v, 40]])
    mask = torch.ones_like(sequences)
    values = critic(sequences, mask)  # [1, 5]
    logits = actor.base_model(input_ids=sequences).logits[:, :-1]  # [1, 5, V]
    log_norm = torch.logsumexp(logits.float(), dim=-1)  # [1, 5]
    torch.testing.assert_close(values, logits[..., v], atol=1e-5, rtol=1e-5)
    log_probs = actor(sequences, mask).log_probs
    for t in (1, 3):  # sequences[t + 1] == v
        expected = (values[0, t] - log_norm[0, t]).item()
        assert log_probs[0, t].item() == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
def test_padding_gives_zero_and_rows_are_independent(critic: CriticModel) -> None:
    sequences, mask = _sequences()
    values = critic(sequences, mask)
    assert (values[1, 5:] == 0).all()  # positions whose next token is padding
    assert (values[1, :5] != 0).all()
    alone = critic(sequences[1:, :6], mask[1:, :6])
    torch.testing.assert_close(alone, values[1:, :5], atol=1e-5, rtol=1e-5)


def test_a_causal_lm_folder_gives_the_actor_trunk_and_a_zero_head(
    fast_tiny_model_dir: Path, actor: ActorLanguage
) -> None:
    critic = CriticModel.from_pretrained(fast_tiny_model_dir)
    actor_trunk = actor.hf_model().get_decoder().state_dict()
    for name, tensor in critic.trunk.state_dict().items():
        torch.testing.assert_close(tensor, actor_trunk[name])
    sequences, mask = _sequences()
    with torch.no_grad():
        assert (critic(sequences, mask) == 0).all()  # zero-initialised head
    assert not is_critic_folder(fast_tiny_model_dir)


def test_gradients_reach_head_and_trunk(critic: CriticModel) -> None:
    critic.train()
    sequences, mask = _sequences()
    critic(sequences, mask).sum().backward()
    assert critic.value_head.linear.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.trunk.parameters())


def test_trunk_gradients_false_keeps_the_trunk_out(critic: CriticModel) -> None:
    sequences, mask = _sequences()
    critic(sequences, mask, trunk_gradients=False).sum().backward()
    assert critic.value_head.linear.weight.grad is not None
    assert all(p.grad is None for p in critic.trunk.parameters())


def test_save_and_reload_give_the_same_values(critic: CriticModel, tmp_path: Path) -> None:
    critic.save_pretrained(tmp_path / "critic")
    assert is_critic_folder(tmp_path / "critic")
    assert (tmp_path / "critic" / "config.json").is_file()
    again = CriticModel.from_pretrained(tmp_path / "critic").eval()
    sequences, mask = _sequences()
    with torch.no_grad():
        torch.testing.assert_close(again(sequences, mask), critic(sequences, mask))
    # the trunk alone is a transformers base model folder
    from transformers import AutoModel

    trunk = AutoModel.from_pretrained(tmp_path / "critic")
    assert type(trunk).__name__ == "Qwen2Model"


def test_rebuild_from_config_and_a_gathered_state(critic: CriticModel, tmp_path: Path) -> None:
    # What sharded strategies do at export: a plain copy from the config, the full state
    # loaded into it, then save_pretrained with that state.
    copy = CriticModel._from_config(critic.config, dtype=critic.dtype)
    copy.load_state_dict(critic.state_dict())
    copy.save_pretrained(tmp_path / "copy", state_dict=critic.state_dict())
    again = CriticModel.from_pretrained(tmp_path / "copy").eval()
    sequences, mask = _sequences()
    with torch.no_grad():
        torch.testing.assert_close(again(sequences, mask), critic(sequences, mask))


def test_value_head_checks() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        ValueHead(0)
    head = ValueHead(4)
    assert (head.linear.weight == 0).all() and (head.linear.bias == 0).all()
    assert ValueHead(4, init_std=0.1).linear.weight.abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="value head"):
        ValueHead.from_pretrained("/nonexistent")


def test_the_trunk_is_loaded_as_the_actor_was(fast_tiny_model_dir: Path) -> None:
    config = ActorLanguage.Config(
        path=str(fast_tiny_model_dir),
        dtype="bfloat16",
        attn_implementation="eager",
        gradient_checkpointing=True,
    )
    options = trunk_options_of(ActorLanguage(config).hf_model())
    assert options == TrunkOptions(
        dtype=torch.bfloat16,
        attn_implementation="eager",
        trust_remote_code=False,
        gradient_checkpointing=True,
    )
    critic = CriticModel.from_pretrained(fast_tiny_model_dir, options)
    assert critic.dtype == torch.bfloat16
    assert critic.value_head.linear.weight.dtype == torch.float32
    assert critic.config._attn_implementation == "eager"
    assert critic.trunk.is_gradient_checkpointing
