#!/usr/bin/env bash
# One-shot GPU check of LightRFT: bf16 GRPO steps on one CUDA device, with sdpa and
# flash-attention (where installed), the local strategy, fsdp and DeepSpeed ZeRO-2 on one
# rank under torchrun (deepspeed where importable), the hf engine; prints step time,
# tokens/s and the train phase's MFU against the card's bf16 peak. Fits in 8 minutes on
# one GPU machine with no network. Each part reports ok / failed / missing and why; the
# summary goes to $OUT (gpu_check.md, gpu_check.json, gpu_check_logs.txt) when set, else
# build/gpu-check/.
#
#   bash benchmarks/gpu_check.sh prepare     # here (registry reachable): build/gpu-wheels
#   bash benchmarks/gpu_check.sh run         # on the GPU machine, build/gpu-wheels carried
#   bash benchmarks/gpu_check.sh run --device cpu          # the same logic on a CPU
#   bash benchmarks/gpu_check.sh run --dry-run             # environment and plan only
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh run --no-install --device cpu
#
# `run` options go to benchmarks/gpu_check/check.py run: --cases NAME..., --case-timeout S,
# --budget-s S (default 400: later cases are skipped once it is spent).
# The image's python (python3, or $PYTHON) is used on the GPU machine: it must have torch,
# transformers and peft; lightrft-core, the plugins and the small pure-Python dependencies
# the image lacks come from the wheels `prepare` wrote.
set -uo pipefail

cd "$(dirname "$0")/.."
HELPER=benchmarks/gpu_check/check.py
WHEELS=build/gpu-wheels
OUT_DIR=${OUT:-build/gpu-check}
mkdir -p "$OUT_DIR"

command=${1:-}
shift || true
case "$command" in
  prepare)
    exec "${PYTHON:-.venv/bin/python}" "$HELPER" prepare --wheels "$WHEELS"
    ;;
  run)
    PY=${PYTHON:-python3}
    install=yes
    if [ "${1:-}" = "--no-install" ]; then install=no; shift; fi
    started=$(date +%s)
    echo "== python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    if [ "$install" = no ]; then
      echo "== --no-install: using the lightrft-core this python has"
    elif [ -d "$WHEELS" ]; then
      echo "== install from $WHEELS (no index, no deps)"
      if ! timeout 120 "$PY" "$HELPER" install --wheels "$WHEELS" >"$OUT_DIR/install.log" 2>&1; then
        echo "install: failed (see $OUT_DIR/install.log); going on with what is importable"
        tail -5 "$OUT_DIR/install.log"
      fi
    else
      echo "== no $WHEELS: using the lightrft-core already installed (if any)"
    fi
    if ! "$PY" -c "import lightrft_core, lightrft_cli" 2>"$OUT_DIR/import.log"; then
      echo "lightrft-core is not importable: $(tail -1 "$OUT_DIR/import.log")"
      printf '# GPU check\n\nfailed: lightrft-core is not importable (%s)\n' \
        "$(tail -1 "$OUT_DIR/import.log")" >"$OUT_DIR/gpu_check.md"
      exit 1
    fi
    timeout 450 "$PY" "$HELPER" run "$@"
    code=$?
    [ "$code" = 124 ] && echo "run: stopped at the 450 s limit (partial summary only)"
    echo "== gpu_check: exit $code after $(( $(date +%s) - started )) s; summary in $OUT_DIR"
    exit "$code"
    ;;
  *)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
