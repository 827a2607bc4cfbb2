"""``benchmarks/train_peak.py``: its FLOP count checked by hand on the 30m tiny model."""

from __future__ import annotations

import importlib.util
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
        "fp32: train phase at 60.0% of the fp32 matmul peak (micro-batch 16); of its time: "
        "model forward + backward 75%, optimizer 5%, loop 20%"
    )
