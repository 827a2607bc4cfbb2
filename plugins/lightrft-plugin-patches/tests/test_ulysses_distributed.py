"""Ulysses sequence parallelism on 2 ranks (one ``torchrun`` launch, gloo on the CPU):
log-probs and gradients equal the unsplit model's, for Llama (eager kernel) and Qwen2
(sdpa), and under the fsdp strategy with ``sequence_parallel_size=2``. The checks
run in ``ulysses_worker.py``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

pytestmark = pytest.mark.slow


def _load_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "distributed_utils", ROOT / "tests" / "distributed_utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_ranks_equal_the_unsplit_model(tmp_path: Path) -> None:
    _load_helpers().torchrun(str(HERE / "ulysses_worker.py"), str(tmp_path), timeout=300)
    results = json.loads((tmp_path / "result.json").read_text())
    assert set(results) == {"llama-eager", "qwen2-sdpa", "fsdp"}
    for case, diffs in results.items():
        assert diffs["log_probs"] < 1e-5, case
        assert diffs["gradients"] < 1e-5, case
    assert results["fsdp"]["data_parallel_size"] == 1
