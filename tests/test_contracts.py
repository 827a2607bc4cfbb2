"""The loop's contracts are interface members, never probed (issue: declared contracts)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from lightrft_core.engines.hf import HFEngine
from lightrft_core.interfaces import Actor, ActorOutput, component_class_problems
from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.testing.fakes import FakeActor, FakeEngine

TRAINER = Path(__file__).resolve().parents[1] / "lightrft_core" / "trainer"


def test_an_actor_without_weight_sync_cannot_be_registered() -> None:
    class NoSync(Actor):
        name = "no_sync"

        def forward(self, sequences, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
            return ActorOutput(log_probs=torch.zeros(sequences.shape[0], sequences.shape[1] - 1))

    problems = " ".join(component_class_problems(NoSync, Actor))
    assert "named_weights_for_sync" in problems
    assert "hf_model" in problems


def test_engines_hold_their_own_copy_unless_they_say_so() -> None:
    assert FakeEngine().shares_model is False  # the interface's default
    engine = HFEngine()
    engine.setup(model=torch.nn.Linear(2, 2))  # the trainer's own module: nothing to sync
    assert engine.shares_model is True


def test_the_strategy_reads_the_weights_of_the_prepared_actor() -> None:
    strategy = LocalStrategy()
    strategy.setup_distributed()
    actor = FakeActor()
    prepared, _, _ = strategy.prepare(actor)
    names = [name for name, _ in strategy.weights_for_sync(prepared)]
    assert names == list(actor.state_dict())


def test_the_trainer_probes_no_component_with_getattr() -> None:
    """``getattr(x, "name", default)`` in the loop means an interface lacks a member."""
    offenders = []
    for path in sorted(TRAINER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) == 3
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
