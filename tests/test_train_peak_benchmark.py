"""``benchmarks/train_peak.py``: its FLOP count checked by hand on the 30m tiny model."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lightrft_core.models.tiny import build_tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_peak.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_peak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_peak"] = module  # its dataclass looks its module up while created
    spec.loader.exec_module(module)
    return module


def test_30m_flops_by_hand() -> None:
    """30m: hidden 512, 8 layers, 8 query heads and 4 KV heads of 64, MLP 1408, vocabulary
    259, tied embeddings. Per layer: q 512*512+512, k and v 512*256+256 each, o 512*512,
    MLP 3*512*1408, two norms 2*512 -> 2,951,168; 8 layers 23,609,344; embedding 259*512 =
    132,608 (also the head); final norm 512 -> N = 23,742,464."""
    train_peak = load_script()
    with torch.device("meta"):
        model = build_tiny_model("30m", vocab_size=259)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 23_742_464
    assert train_peak.attention_width(model.config) == 512
    # two sequences of 10 and 20 tokens: 6 * N * 30 + 12 * 8 * 512 * (10^2 + 20^2)
    # = 4,273,643,520 + 24,576,000
    flops = train_peak.train_flops(n_params, 8, 512, torch.tensor([10, 20]))
    assert flops == 4_298_219_520


def test_computed_tokens_padded_to_each_micro_batch_longest_row_or_packed() -> None:
    train_peak = load_script()
    lengths = torch.tensor([3, 7, 5, 2])
    micro_batches = list(torch.arange(4).split(2))  # rows {0, 1} -> 2 * 7, {2, 3} -> 2 * 5
    assert train_peak.computed_tokens(lengths, micro_batches, packed=False) == 24
    assert train_peak.computed_tokens(lengths, micro_batches, packed=True) == 17


def test_summary_reports_the_best_setting_per_precision(
    capsys: pytest.CaptureFixture[str],
) -> None:
    train_peak = load_script()

    def row(size: int, fraction: float) -> dict[str, object]:
        return {
            "strategy": "local",
            "precision": "fp32",
            "micro_batch_size": size,
            "train_fraction": fraction,
            "train_s": 2.0,
            "bare_fwd_bwd_s": 1.5,
            "optimizer_s": 0.1,
            "loop_overhead_s": 0.4,
        }

    train_peak.print_summary([row(128, 0.5), row(16, 0.6)])
    out = capsys.readouterr().out
    assert out.strip() == (
        "local fp32: train phase at 60.0% of the fp32 matmul peak (micro-batch 16); of its time: "
        "model forward + backward 75%, optimizer 5%, loop 20%"
    )


def test_gemm_shapes_of_a_tiny_config_by_hand() -> None:
    """Hidden 8, 1 layer, 2 query heads and 1 KV head of 4, MLP 12, vocabulary 10 (tied
    head), sequences of 3, 5 and 3 tokens: 11 tokens. Each Linear (in, out) gives forward
    X W^T [11, in] x [in, out] (W read transposed), dX = dY W [11, out] x [out, in] and
    dW = dY^T X [out, 11] x [11, in] (dY read transposed); q and o are both 8 -> 8, k and v
    both 8 -> 4, gate and up both 8 -> 12, so those shapes occur twice. Attention per
    length, both heads of all its sequences in one batch (length 3: 2 x 2 = 4, length 5: 2):
    Q K^T and dO V^T [T, 4] x [4, T] (K, V read transposed), P V and dS K [T, T] x [T, 4],
    P^T dO and dS^T Q the same with P, dS read transposed."""
    train_peak = load_script()
    Gemm = train_peak.Gemm
    with torch.device("meta"):
        model = build_tiny_model(
            "5m",
            vocab_size=10,
            hidden_size=8,
            intermediate_size=12,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    gemms = train_peak.train_gemms(model, model.config, torch.tensor([3, 5, 3]))

    def linear(in_f: int, out_f: int, times: int) -> dict[object, int]:
        return {
            Gemm(1, 11, in_f, out_f, b_t=True): times,
            Gemm(1, 11, out_f, in_f): times,
            Gemm(1, out_f, 11, in_f, a_t=True): times,
        }

    def attention(batch: int, t: int) -> dict[object, int]:
        return {
            Gemm(batch, t, 4, t, b_t=True): 2,
            Gemm(batch, t, t, 4): 2,
            Gemm(batch, t, t, 4, a_t=True): 2,
        }

    expected = {
        **linear(8, 8, 2),  # q, o
        **linear(8, 4, 2),  # k, v
        **linear(8, 12, 2),  # gate, up
        **linear(12, 8, 1),  # down
        **linear(8, 10, 1),  # lm_head
        **attention(4, 3),
        **attention(2, 5),
    }
    assert dict(gemms) == expected
    # the FLOPs are the train phase's formula: 6 * 11 * (64 + 32 + 32 + 64 + 96 + 96 + 96
    # + 80) + 12 * 1 * 8 * (9 + 25 + 9) = 36,960 + 4,128
    assert sum(g.flops * n for g, n in gemms.items()) == 41_088


def test_gemm_seconds_runs_the_transposed_layouts() -> None:
    train_peak = load_script()
    gemm = train_peak.Gemm(2, 3, 4, 5, a_t=True, b_t=True)
    assert gemm.flops == 2 * 2 * 3 * 4 * 5
    assert train_peak.gemm_seconds(gemm, torch.bfloat16, repeats=1) >= 0.0


def test_gemm_ceiling_sums_each_shape_times_its_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every product timed at 1 s: a Linear product of 2 * 4 * 4 * 4 = 128 FLOPs occurring
    3 times and an attention product of 2 * 2 * 3 * 3 * 3 = 108 FLOPs occurring twice."""
    train_peak = load_script()
    monkeypatch.setattr(train_peak, "gemm_seconds", lambda *args: 1.0)
    linear, attention = train_peak.Gemm(1, 4, 4, 4), train_peak.Gemm(2, 3, 3, 3)
    totals = train_peak.gemm_ceiling(
        Counter({linear: 3, attention: 2}), torch.float32, 1, train_peak.time.process_time
    )
    assert totals == {
        "flops": 3 * 128 + 2 * 108,
        "seconds": 5.0,
        "linear_flops": 384,
        "linear_seconds": 3.0,
    }


def test_bf16_weights_step_fp32_masters_and_refresh_the_bf16_copies() -> None:
    """SGD with lr 0.5 on a 3 -> 2 Linear: the master moves by 0.5 x the bf16 gradient
    cast to fp32, the weight the forward uses becomes that master rounded to bf16."""
    from types import SimpleNamespace

    from lightrft_core.strategies.local import LocalStrategy

    train_peak = load_script()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    strategy = LocalStrategy(LocalStrategy.Config(precision="bf16", device="cpu"))
    strategy.setup_distributed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    masters = [p.detach().clone() for p in model.parameters()]
    train_peak.compute_in_bf16(SimpleNamespace(c=SimpleNamespace(strategy=strategy), actor=model))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with strategy.autocast():
        model(torch.ones(4, 3, dtype=torch.bfloat16)).float().sum().backward()
    grads = [p.grad.float() for p in model.parameters()]
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    strategy.optimizer_step(model, optimizer)
    for p, master, grad in zip(model.parameters(), masters, grads, strict=True):
        assert p.dtype == torch.bfloat16 and p.grad is None
        assert torch.equal(p, (master - 0.5 * grad).to(torch.bfloat16))


def test_fractions_are_rescaled_to_the_better_peak() -> None:
    """A first peak of 100 and a final one of 400 (factor 0.25): a train phase measured at
    80% of the first is 20% of the final; the ceiling's fractions likewise."""
    rows = [{"precision": "bf16", "train_fraction": 0.8, "bare_fraction": 0.4}]
    ceilings = {"bf16": {"fraction": 1.2, "linear_fraction": 1.6, "attention_fraction": 0.2}}
    load_script().rescale_fractions(rows, ceilings, {"bf16": 100 / 400})
    assert rows == [{"precision": "bf16", "train_fraction": 0.2, "bare_fraction": 0.1}]
    assert ceilings == {
        "bf16": {"fraction": 0.3, "linear_fraction": 0.4, "attention_fraction": 0.05}
    }
