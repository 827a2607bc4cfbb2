"""The ``fsdp`` strategy in this process (a one-rank gloo group): conformance, options,
generation with the shared module, export, checkpoints. The two-rank checks (equivalence
with ``local``, resume, a killed rank) are in ``tests/test_distributed_fsdp.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.engines.hf import HFEngine
from lightrft_core.interfaces import SamplingParams
from lightrft_core.models.tiny import build_byte_tokenizer
from lightrft_core.plugins import PluginManager
from lightrft_core.testing import StrategyConformance
from lightrft_plugin_fsdp.strategy import FSDPStrategy


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    """The strategies of this module share one process group, removed afterwards so that
    no other test finds it."""
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def make_strategy(**options: Any) -> FSDPStrategy:
    strategy = FSDPStrategy(FSDPStrategy.Config(**options))
    strategy.setup_distributed()
    return strategy


class TestFSDPConformance(StrategyConformance):
    strategy_cls = FSDPStrategy


def test_options_are_checked() -> None:
    for bad in ({"precision": "fp16"}, {"timeout_s": 0}, {"backend": "mpi"}):
        with pytest.raises(ValueError):
            FSDPStrategy.Config(**bad)


def test_the_plugin_registers_the_strategy() -> None:
    import lightrft_plugin_fsdp.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    assert pm.get_strategy("fsdp") is FSDPStrategy


def test_layers_are_units_and_the_actor_is_the_root(tiny_model_dir: Path) -> None:
    s = make_strategy()
    actor = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir)))
    optimizer = s.create_optimizer(actor, lr=1e-3)
    actor, optimizer, _ = s.prepare(actor, optimizer)
    units = [name for name, m in actor.named_modules() if isinstance(m, FSDPModule)]
    assert units == ["", "model.model.layers.0", "model.model.layers.1"]
    assert isinstance(actor, ActorLanguage)  # still the user's class
    sharded = {id(p) for p in actor.parameters()}
    assert all(id(p) in sharded for g in optimizer.param_groups for p in g["params"])
    assert all(hasattr(p, "full_tensor") for p in actor.parameters())  # DTensors


def test_generation_uses_gathered_weights_and_reshards(tiny_model_dir: Path) -> None:
    s = make_strategy()
    actor = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir)))
    engine = HFEngine()
    engine.setup(model=actor.model, tokenizer=build_byte_tokenizer())
    actor, _, _ = s.prepare(actor, s.create_optimizer(actor, lr=1e-3))
    params = SamplingParams(n=2, max_new_tokens=5, seed=0, temperature=1.0)
    with s.generation_context(actor):
        assert not any(hasattr(p, "full_tensor") for p in actor.parameters())
        outputs = engine.generate([[1, 2, 3], [4, 5]], params)
    assert len(outputs) == 4 and all(o.token_ids for o in outputs)
    assert all(hasattr(p, "full_tensor") for p in actor.parameters())  # resharded
    seq = torch.tensor([[1, 2, 3, *outputs[0].token_ids]])
    lp = actor(seq, torch.ones_like(seq)).log_probs[0, 2:]
    assert torch.allclose(lp, torch.tensor(outputs[0].log_probs), atol=1e-5)


def test_training_checkpoint_and_export(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    s = make_strategy()
    actor = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir)))
    optimizer = s.create_optimizer(actor, lr=1e-2)
    scheduler = s.create_scheduler(optimizer, name="cosine", warmup_steps=1, total_steps=4)
    actor, optimizer, scheduler = s.prepare(actor, optimizer, scheduler)
    seq = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(seq)

    def step() -> float:
        with s.no_sync(actor):
            s.backward(-actor(seq[:2], mask[:2]).log_probs.mean(), actor)
        s.backward(-actor(seq[2:], mask[2:]).log_probs.mean(), actor)
        return s.optimizer_step(actor, optimizer, scheduler, max_grad_norm=1.0)

    assert step() > 0
    s.save_checkpoint(
        tmp_path / "ckpt", model=actor, optimizer=optimizer, scheduler=scheduler,
        client_state={"step": 1},
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "dcp",
        "rng_rank0.pt",
        "training_state.pt",
        "world.json",
    ]
    expected_norm = step()
    with torch.no_grad():
        expected = actor(seq, mask).log_probs
    state = s.load_checkpoint(
        tmp_path / "ckpt", model=actor, optimizer=optimizer, scheduler=scheduler
    )
    assert state == {"step": 1}
    assert step() == pytest.approx(expected_norm, rel=1e-6)  # same second step again
    with torch.no_grad():
        assert torch.allclose(actor(seq, mask).log_probs, expected, atol=1e-6)

    s.export_hf(actor.model, tmp_path / "export", build_byte_tokenizer())
    exported = ActorLanguage.from_model(AutoModelForCausalLM.from_pretrained(tmp_path / "export"))
    with torch.no_grad():
        assert torch.allclose(exported(seq, mask).log_probs, expected, atol=1e-5)


def test_reference_model_is_frozen_and_resharded_after_forward(tiny_model_dir: Path) -> None:
    s = make_strategy(offload_reference=True)
    reference = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir)))
    reference, optimizer, _ = s.prepare(reference)
    assert optimizer is None and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    seq = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        reference(seq, torch.ones_like(seq))
    assert all(hasattr(p, "full_tensor") for p in reference.parameters())  # freed again


def test_collectives_on_one_rank() -> None:
    s = make_strategy()
    assert float(s.all_reduce(3, op="mean")) == 3.0
    assert s.all_reduce(torch.tensor([1.0, 2.0]), op="max").tolist() == [1.0, 2.0]
    assert s.all_gather(torch.tensor(5)).tolist() == [5]
    with pytest.raises(ValueError, match="unknown reduce op"):
        s.all_reduce(1.0, op="prod")  # type: ignore[arg-type]


def test_lora_export_merges_the_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    s = make_strategy()
    actor = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir), lora_rank=4))
    optimizer = s.create_optimizer(actor, lr=1e-2)
    actor, optimizer, _ = s.prepare(actor, optimizer)
    seq = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(seq)
    s.backward(-actor(seq, mask).log_probs.mean(), actor)
    s.optimizer_step(actor, optimizer)  # LoRA B is no longer 0: the merge matters
    with torch.no_grad():
        expected = actor(seq, mask).log_probs
    s.export_hf(actor.model, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert not any("lora" in name for name, _ in plain.named_parameters())
    with torch.no_grad():
        got = ActorLanguage.from_model(plain)(seq, mask).log_probs
    assert torch.allclose(got, expected, atol=1e-5)


def _saved_linear(s: FSDPStrategy, path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer, _ = s.prepare(model, optimizer)
    s.save_checkpoint(path, model=model, optimizer=optimizer)


def _load_linear(s: FSDPStrategy, path: Path, width: int = 3) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, width))
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer, _ = s.prepare(model, optimizer)
    s.load_checkpoint(path, model=model, optimizer=optimizer)


@pytest.mark.parametrize(
    ("part", "cut", "shown"),
    [
        ("dcp/.metadata", True, "dcp is damaged (pickle data was truncated)"),
        ("dcp/__0_0.distcp", True, "dcp is damaged (EOFError)"),
        ("dcp/__0_0.distcp", False, "dcp is damaged (EOFError)"),
        ("training_state.pt", False, "training_state.pt is damaged ("),
        ("world.json", False, "world.json is damaged ("),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_error(
    tmp_path: Path, part: str, cut: bool, shown: str
) -> None:
    from lightrft_core.checkpoint import CheckpointError

    s = make_strategy()
    _saved_linear(s, tmp_path / "ckpt")
    damaged_file = tmp_path / "ckpt" / part
    data = damaged_file.read_bytes()
    damaged_file.write_bytes(data[: len(data) // 2] if cut else b"not a checkpoint" * 4)
    with pytest.raises(CheckpointError) as caught:
        _load_linear(s, tmp_path / "ckpt")
    message = str(caught.value)
    assert message.startswith(f"checkpoint {tmp_path / 'ckpt'}: {shown}")
    assert message.endswith("; resume from an earlier checkpoint") and "\n" not in message


def test_a_checkpoint_of_another_model_size_is_one_clear_error(tmp_path: Path) -> None:
    from lightrft_core.checkpoint import CheckpointError

    s = make_strategy()
    _saved_linear(s, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"does not fit the model \(another model size") as c:
        _load_linear(s, tmp_path / "ckpt", width=5)
    assert "Size mismatch" in str(c.value) and "model.path and model.lora_*" in str(c.value)


@pytest.mark.parametrize("split", ["split_sequences", "split_values", "split_scores"])
def test_splitting_without_the_patches_plugin_says_what_to_install(
    split: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    import lightrft_plugin_fsdp.strategy as module

    found = importlib.util.find_spec

    def without_patches(name: str, *args: Any) -> Any:
        return None if name == "lightrft_plugin_patches" else found(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_patches)
    model: Any = ActorLanguage.__new__(ActorLanguage)  # passes split_sequences' type check
    with pytest.raises(ImportError, match=r"needs lightrft-plugin-patches \(pip install"):
        getattr(module, split)(model, None)
