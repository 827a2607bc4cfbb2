"""The vLLM engine with its engine core in its own process (``VLLM_ENABLE_V1_MULTIPROCESSING
=1``, vLLM's default): ``update_weights`` reaches the worker through the named methods of
the worker extension, without ``VLLM_ALLOW_INSECURE_SERIALIZATION``. One engine start in a
subprocess (the variable must be set before vllm is imported; ≈20-30 s on a CPU)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not importable here"
)

SCRIPT = Path(__file__).with_name("own_process_sync.py")


def test_update_weights_reaches_an_engine_in_its_own_process(untied_model_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ALLOW_INSECURE_SERIALIZATION"}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(untied_model_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: vLLM's helpers end with it below
    )
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, output[-4000:]
    gaps = dict(
        line.split() for line in output.splitlines() if line.startswith(("stale", "synced"))
    )
    assert float(gaps["stale"]) > 1e-2  # the perturbed actor differs from the loaded engine
    assert float(gaps["synced"]) < 1e-4  # the in-process tests' tolerance
