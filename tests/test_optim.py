"""AdamW's kernel choice (``optim.adamw_flags``): fused by default on fp32 CPU/CUDA
parameters, the same update as torch's loop, kept across ``load_state_dict``."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.optim import adamw, adamw_flags
from lightrft_core.strategies import LocalStrategy

IMPLEMENTATIONS = ("fused", "foreach", "for-loop")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 6, generator=generator)
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def test_auto_is_fused_for_fp32_on_cpu_or_cuda_else_torch_default() -> None:
    fp32 = [torch.zeros(2)]
    assert adamw_flags(fp32, "auto") == {"fused": True, "foreach": None}
    default = {"fused": None, "foreach": None}  # torch's own choice
    assert adamw_flags([torch.zeros(2, dtype=torch.bfloat16)], "auto") == default
    meta = [torch.empty(2, device="meta")]  # fsdp meta_init: decided by the training device
    assert adamw_flags(meta, "auto") == default
    assert adamw_flags(meta, "auto", torch.device("cpu")) == {"fused": True, "foreach": None}
    assert adamw_flags(fp32, "for-loop") == {"fused": None, "foreach": False}
    assert adamw_flags(fp32, "foreach") == {"fused": None, "foreach": True}
    with pytest.raises(ValueError, match="AdamW implementation must be one of"):
        adamw_flags(fp32, "apex")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_first_step_moves_each_weight_by_lr_times_the_sign_of_its_gradient(
    implementation: str,
) -> None:
    # step 1: m = 0.1 g, v = 0.001 g^2; bias-corrected m^ = g, v^ = g^2, so the update is
    # lr * g / (|g| + eps); weight decay 0.5 first scales the decayed weights by 1 - lr * 0.5
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = adamw(model, lr=0.01, weight_decay=0.5, implementation=implementation)
    _step(model, optimizer, seed=1)
    for old, param in zip(before, model.parameters(), strict=True):
        grad = param.grad
        decay = 1 - 0.01 * 0.5 if param.ndim == 2 else 1.0
        expected = old * decay - 0.01 * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-7)


def test_fused_agrees_with_the_loop_and_repeats_exactly() -> None:
    runs = {}
    for name in ("fused", "for-loop", "fused-again"):
        model = _model()
        optimizer = adamw(model, lr=1e-2, weight_decay=0.1, implementation=name.split("-a")[0])
        for seed in range(5):
            _step(model, optimizer, seed)
        runs[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(runs["fused"], runs["for-loop"], rtol=0, atol=1e-6)
    assert torch.equal(runs["fused"], runs["fused-again"])  # same inputs, same bits


def test_the_configured_kernel_survives_loading_a_checkpoint_of_another() -> None:
    model = _model()
    loop = adamw(model, lr=1e-2, implementation="for-loop")
    _step(model, loop, seed=0)
    fused = adamw(model, lr=1e-2, implementation="fused")
    fused.load_state_dict(loop.state_dict())
    assert all(g["fused"] is True and g["foreach"] is None for g in fused.param_groups)
    assert all(s["step"].dtype == torch.float32 for s in fused.state.values())
    _step(model, fused, seed=1)  # the fused kernel steps on the loaded state
    assert all(float(s["step"]) == 2.0 for s in fused.state.values())


def test_the_strategy_passes_the_implementation_on() -> None:
    strategy = LocalStrategy(LocalStrategy.Config())
    strategy.setup_distributed()
    default = strategy.create_optimizer(_model(), lr=1e-3)
    loop = strategy.create_optimizer(_model(), lr=1e-3, implementation="for-loop")
    assert default.defaults["fused"] is True
    assert loop.defaults["fused"] is None and loop.defaults["foreach"] is False
