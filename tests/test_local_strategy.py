"""The ``local`` strategy: steps, schedules, exact resume, atomic saves, Hugging Face export."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.optim import adamw, lr_factor, lr_schedule
from lightrft_core.rng import seed_everything
from lightrft_core.strategies import LocalStrategy
from lightrft_core.testing import StrategyConformance


class TestLocalStrategyConformance(StrategyConformance):
    strategy_cls = LocalStrategy


def make_strategy(**config: Any) -> LocalStrategy:
    strategy = LocalStrategy(LocalStrategy.Config(**config))
    strategy.setup_distributed()
    return strategy


def tiny_qwen2(seed: int = 0) -> Any:
    """A 2-layer Qwen2 with tied embeddings over the byte tokenizer's vocabulary."""
    return build_tiny_model(
        "5m",
        vocab_size=259,
        seed=seed,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )


# ---------------------------------------------------------------------- optim.py
@pytest.mark.parametrize(
    ("name", "warmup", "total", "step", "expected"),
    [
        ("constant", 4, 10, 0, 0.25),
        ("constant", 4, 10, 2, 0.75),
        ("constant", 4, 10, 3, 1.0),
        ("constant", 4, 10, 50, 1.0),
        ("constant", 0, 10, 0, 1.0),
        ("cosine", 2, 10, 0, 0.5),
        ("cosine", 2, 10, 1, 1.0),
        ("cosine", 2, 10, 2, 1.0),  # decay starts at progress 0
        ("cosine", 2, 10, 4, 0.5 * (1 + math.cos(math.pi / 4))),  # progress 2/8
        ("cosine", 2, 10, 6, 0.5),  # progress 4/8
        ("cosine", 2, 10, 10, 0.0),
        ("cosine", 2, 10, 15, 0.0),  # stays at 0 past the end
        ("cosine", 0, 4, 1, 0.5 * (1 + math.cos(math.pi / 4))),
    ],
)
def test_lr_factor_by_hand(name: str, warmup: int, total: int, step: int, expected: float) -> None:
    factor = lr_factor(step, name=name, warmup_steps=warmup, total_steps=total)
    assert factor == pytest.approx(expected, abs=1e-12)


def test_scheduler_sets_the_learning_rate_each_step() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = make_strategy().create_scheduler(
        optimizer, name="cosine", warmup_steps=2, total_steps=6
    )
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1.0, 2.0, 2.0, 2 * 0.5 * (1 + math.cos(math.pi / 4)), 1.0]
    expected += [2 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="unknown lr_scheduler"):
        lr_schedule(optimizer, name="linear", warmup_steps=0, total_steps=5)


def test_adamw_skips_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[1].bias.requires_grad_(False)  # frozen parameters are left out
    optimizer = adamw(model, lr=0.1, weight_decay=0.01)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert len(no_decay["params"]) == 2  # linear bias and norm weight


# ---------------------------------------------------------------------- steps
def test_gradient_accumulation_and_clipping_norm() -> None:
    strategy = make_strategy()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    models = [torch.nn.Linear(3, 1) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    strategy.backward(((models[0](x) - y) ** 2).mean(), models[0])  # one batch
    expected_norm = torch.sqrt(sum((p.grad**2).sum() for p in models[0].parameters()))
    for rows in (slice(0, 4), slice(4, 8)):  # two micro-batches, loss already scaled
        strategy.backward(((models[1](x[rows]) - y[rows]) ** 2).mean() / 2, models[1])
    norms = [strategy.optimizer_step(m, o) for m, o in zip(models, optimizers, strict=True)]
    assert norms == pytest.approx([float(expected_norm)] * 2, rel=1e-6)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)
        assert a.grad is None, "gradients must be zeroed"


def test_non_finite_gradient_skips_the_step() -> None:
    strategy = make_strategy()
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = lr_schedule(optimizer, name="constant", warmup_steps=3, total_steps=5)
    before = [p.detach().clone() for p in model.parameters()]
    strategy.backward(model(torch.tensor([[float("nan"), 1.0]])).sum(), model)
    norm = strategy.optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)
    assert not math.isfinite(norm)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert scheduler.last_epoch == 0 and model.weight.grad is None


def test_bf16_autocast_keeps_fp32_weights() -> None:
    model = torch.nn.Linear(4, 4)
    bf16, fp32 = make_strategy(precision="bf16"), make_strategy()
    model, _, _ = bf16.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with bf16.autocast():
        assert model(torch.randn(2, 4)).dtype == torch.bfloat16
    with fp32.autocast():
        assert model(torch.randn(2, 4)).dtype == torch.float32
    assert model.weight.dtype == torch.float32


def test_collectives_on_one_process() -> None:
    strategy = make_strategy()
    for op in ("mean", "sum", "max", "min"):
        assert float(strategy.all_reduce(2.5, op=op)) == 2.5  # type: ignore[arg-type]
    assert strategy.all_reduce(3, op="mean").is_floating_point()
    value = torch.ones(2, requires_grad=True)
    reduced = strategy.all_reduce(value)
    assert not reduced.requires_grad and reduced.data_ptr() != value.data_ptr()
    assert strategy.all_gather(torch.tensor(4.0)).tolist() == [4.0]
    assert strategy.all_gather(torch.ones(2, 3)).shape == (2, 3)
    strategy.barrier()
    with pytest.raises(ValueError, match="reduce op"):
        strategy.all_reduce(1.0, op="avg")  # type: ignore[arg-type]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="precision"):
        LocalStrategy.Config(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        LocalStrategy.Config(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="setup_distributed"):
        _ = LocalStrategy().device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA"):
            make_strategy(device="cuda")


# ---------------------------------------------------------------------- checkpoints
def _setup(seed: int) -> tuple[LocalStrategy, torch.nn.Module, Any, Any]:
    strategy = make_strategy()
    seed_everything(seed)  # what the run's start does with run.seed
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    optimizer = strategy.create_optimizer(model, lr=1e-2, weight_decay=0.1)
    scheduler = strategy.create_scheduler(optimizer, name="cosine", warmup_steps=2, total_steps=8)
    return (strategy, *strategy.prepare(model, optimizer, scheduler))  # type: ignore[return-value]


def _train(run: tuple[LocalStrategy, torch.nn.Module, Any, Any], steps: int) -> None:
    """Steps whose data and dropout draw from the torch, numpy and python RNGs."""
    strategy, model, optimizer, scheduler = run
    for _ in range(steps):
        x = torch.randn(8, 4)
        y = x.sum(-1, keepdim=True) * float(np.random.rand()) + random.random()
        for rows in (slice(0, 4), slice(4, 8)):
            strategy.backward(((model(x[rows]) - y[rows]) ** 2).mean() / 2, model)
        strategy.optimizer_step(model, optimizer, scheduler, max_grad_norm=0.5)


def _draws() -> tuple[list[float], float, float]:
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_resume_continues_exactly(tmp_path: Path) -> None:
    run = _setup(seed=1)
    _train(run, 3)
    run[0].save_checkpoint(
        tmp_path / "ckpt",
        model=run[1],
        optimizer=run[2],
        scheduler=run[3],
        client_state={"step": 3, "data": {"epoch": 0, "position": 24}},
    )
    _train(run, 3)
    expected = {k: v.clone() for k, v in run[1].state_dict().items()}
    expected_draws, expected_lr = _draws(), run[2].param_groups[0]["lr"]

    resumed = _setup(seed=2)  # other seed and other initial weights: all must come back
    state = resumed[0].load_checkpoint(
        tmp_path / "ckpt", model=resumed[1], optimizer=resumed[2], scheduler=resumed[3]
    )
    assert state == {"step": 3, "data": {"epoch": 0, "position": 24}}
    _train(resumed, 3)
    for key, value in resumed[1].state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert _draws() == expected_draws
    assert resumed[2].param_groups[0]["lr"] == expected_lr


def test_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy, model, optimizer, _ = run = _setup(seed=0)
    _train(run, 2)
    strategy.save_checkpoint(
        tmp_path / "ckpt", model=model, optimizer=optimizer, client_state={"step": 2}
    )
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _train(run, 1)

    def crash(*args: Any, **kwargs: Any) -> None:  # after model.safetensors was written
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        strategy.save_checkpoint(
            tmp_path / "ckpt", model=model, optimizer=optimizer, client_state={"step": 3}
        )
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no temporary left behind"
    fresh = _setup(seed=5)
    assert fresh[0].load_checkpoint(tmp_path / "ckpt", model=fresh[1], optimizer=fresh[2]) == {
        "step": 2
    }
    for key, value in fresh[1].state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_checkpoint_of_a_tied_qwen2_and_crash_recovery(tmp_path: Path) -> None:
    strategy = make_strategy()
    model = tiny_qwen2(seed=0)
    strategy.save_checkpoint(tmp_path / "ckpt", model=model, client_state={"step": 1})
    (tmp_path / "ckpt").rename(tmp_path / "ckpt.old")  # crash between the two renames
    fresh = tiny_qwen2(seed=1)
    assert strategy.load_checkpoint(tmp_path / "ckpt", model=fresh) == {"step": 1}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        strategy.load_checkpoint(tmp_path / "missing", model=fresh)


# ---------------------------------------------------------------------- export
def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[72, 101, 108, 108, 111, 33]])).logits


def test_export_hf_reloads_with_identical_logits(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    strategy, model, tokenizer = make_strategy(), tiny_qwen2().eval(), build_byte_tokenizer()
    strategy.export_hf(model, tmp_path / "hf", tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(loaded), _logits(model))
    text = "Hi there!\n"
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").encode(text) == tokenizer.encode(text)
    with pytest.raises(TypeError, match="save_pretrained"):
        strategy.export_hf(torch.nn.Linear(2, 2), tmp_path / "linear")


def test_export_hf_merges_lora_without_touching_the_training_model(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_qwen2(), lora).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_strategy().export_hf(model, tmp_path / "hf")
    after = model.state_dict()
    assert before.keys() == after.keys() and any("lora_A" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "hf" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not any("lora" in k for k in loaded.state_dict())
    assert not torch.allclose(_logits(loaded), _logits(tiny_qwen2().eval()), atol=1e-4)
    assert torch.allclose(_logits(loaded), _logits(model), atol=1e-5)
