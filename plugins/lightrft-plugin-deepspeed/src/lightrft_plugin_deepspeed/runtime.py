"""Importing deepspeed: the environment it reads at import, and a clear error when missing.

DeepSpeed picks its accelerator when it is first imported (``DS_ACCELERATOR``), and builds
C++ ops (shared-memory collectives on CPU, CPU Adam) on first use with ninja, caching them
in ``TORCH_EXTENSIONS_DIR``. Both must be set before the import, so every import of
deepspeed in this plugin goes through ``import_deepspeed``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

INSTALL_HINT = (
    "the deepspeed strategy needs the deepspeed package, a dependency of "
    "lightrft-plugin-deepspeed: pip install lightrft-plugin-deepspeed (in this repository: "
    ".venv/bin/pip install -c constraints.txt -e plugins/lightrft-plugin-deepspeed), "
    "or pip install 'deepspeed>=0.19.8,<0.20'"
)


def prepare_environment(*, device_type: str, extensions_dir: str | None) -> None:
    """Set what deepspeed reads at import: the accelerator, the op cache, ninja on PATH."""
    wanted = "cpu" if device_type == "cpu" else "cuda"
    current = os.environ.get("DS_ACCELERATOR")
    if current is None:
        os.environ["DS_ACCELERATOR"] = wanted
    elif current != wanted:
        raise RuntimeError(
            f"DS_ACCELERATOR={current} is set in the environment but the deepspeed strategy "
            f"trains on {device_type}; unset it or set strategy.device accordingly"
        )
    prepare_op_builds(extensions_dir)


def prepare_op_builds(extensions_dir: str | None) -> None:
    """Where JIT-compiled ops are cached, and ninja on PATH (read when an op is built)."""
    if extensions_dir:
        Path(extensions_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(extensions_dir).resolve())
    if shutil.which("ninja") is None:  # the ninja wheel's binary sits beside the interpreter
        scripts = str(Path(sys.executable).parent)
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


def import_deepspeed(*, device_type: str, extensions_dir: str | None = None) -> ModuleType:
    """``import deepspeed`` with the environment prepared; a missing package is an
    ``ImportError`` that says what to install.

    transformers imports deepspeed by itself when it is installed (its DeepSpeed
    integration), so deepspeed may already be loaded, with the accelerator it detected.
    """
    already = sys.modules.get("deepspeed")
    if already is not None:
        accelerator = importlib.import_module("deepspeed.accelerator").get_accelerator()
        if device_type == "cpu" and accelerator.device_name() != "cpu":
            raise RuntimeError(
                "deepspeed was imported (by transformers or another library) before the "
                "strategy could set DS_ACCELERATOR=cpu; set DS_ACCELERATOR=cpu in the "
                "environment to train on the CPU of a machine with GPUs"
            )
        prepare_op_builds(extensions_dir)
        return already
    prepare_environment(device_type=device_type, extensions_dir=extensions_dir)
    try:
        return importlib.import_module("deepspeed")
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] == "deepspeed":
            raise ImportError(INSTALL_HINT) from err
        raise
