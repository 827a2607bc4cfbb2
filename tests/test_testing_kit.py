"""The fakes pass the conformance suites they are shipped with."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.interfaces import SamplingParams
from lightrft_core.testing import (
    ActorConformance,
    ConstantReward,
    EngineConformance,
    FakeActor,
    FakeEngine,
    FakeStrategy,
    RewardConformance,
    StrategyConformance,
)


class TestFakeStrategy(StrategyConformance):
    strategy_cls = FakeStrategy


class TestFakeEngine(EngineConformance):
    engine_cls = FakeEngine


class TestConstantReward(RewardConformance):
    reward_cls = ConstantReward


class TestFakeActor(ActorConformance):
    actor_cls = FakeActor


def test_fake_strategy_records_calls_in_order() -> None:
    s = FakeStrategy()
    s.setup_distributed()
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s.prepare(model, opt)
    s.backward(model(torch.ones(1, 2)).sum(), model)
    s.optimizer_step(model, opt)
    assert s.calls == ["setup_distributed", "prepare", "backward", "optimizer_step"]


def test_fake_strategy_grad_norm_is_the_global_norm() -> None:
    # loss = w·x + b with x = (3, 4): grads are (3, 4) and 1 -> norm sqrt(9 + 16 + 1)
    s = FakeStrategy()
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    s.backward(model(torch.tensor([[3.0, 4.0]])).sum(), model)
    assert s.optimizer_step(model, opt) == pytest.approx(26**0.5)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    s = FakeStrategy()
    model = torch.nn.Linear(2, 1)
    s.save_checkpoint(tmp_path / "ckpt", model=model, client_state={"step": 1})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        s.save_checkpoint(tmp_path / "ckpt", model=model, client_state={"step": 2})
    monkeypatch.undo()
    assert s.load_checkpoint(tmp_path / "ckpt", model=model) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_fake_engine_honours_n_and_max_new_tokens() -> None:
    engine = FakeEngine(FakeEngine.Config(response_token_ids=[9, 8, 7]))
    out = engine.generate([[1], [2]], SamplingParams(n=2, max_new_tokens=2))
    assert [o.token_ids for o in out] == [[9, 8]] * 4
    assert [o.finish_reason for o in out] == ["length"] * 4


def test_fake_actor_log_probs_match_a_naive_log_softmax() -> None:
    actor = FakeActor()
    seqs = torch.tensor([[1, 4, 2, 9]])
    out = actor(seqs, torch.ones_like(seqs))
    logits = actor.head(actor.embed(seqs[:, :-1]))
    expected = torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
    assert torch.allclose(out.log_probs, expected, atol=1e-6)
