"""Launching 2-process jobs with torchrun for the tests of the deepspeed strategy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
#: DeepSpeed compiles C++ ops on first use; the repository's ignored build folder keeps them.
EXTENSIONS_DIR = ROOT / "build" / "torch_extensions"
#: The first launch on a fresh machine also compiles DeepSpeed's shared-memory op (~30 s).
LAUNCH_TIMEOUT_S = 420


def launch(arguments: list[str], *, nproc: int = 2, label: str = "") -> str:
    """``torchrun --standalone --nproc-per-node N <arguments>``; fails the test with the
    tail of the output when the job exits non-zero. Returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR))
    env.pop("LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD", None)  # the job uses the installed plugins
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), *arguments,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"torchrun {label or arguments[0]} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-8000:]}"
        )
    return done.stdout


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., str]:
    return launch
