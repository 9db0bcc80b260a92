#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py: t5ort fp32/fp16 on CUDA against PyTorch,
# parity and speed, one table on stdout), run from anywhere:
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]   # e.g. --repeats 5; --provider cpu --quick
#
# Environment:
#   T5ORT_GPU_INSTALL=1   first install t5ort with its exporter and swap onnxruntime for
#                         onnxruntime-gpu, as README's CUDA section says (needs a package index)
#   T5ORT_GPU_WHEELS=DIR  instead install the wheels in DIR without an index (--no-deps) into
#                         /tmp/t5ort-site and put that first on PYTHONPATH (machines with no network)
#   T5ORT_GPU_TIMEOUT     seconds gpu_check.py may run (default 290)
#   PYTHON                the interpreter (default python3)
# t5ort itself is imported from this checkout (PYTHONPATH), installed or not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ "${T5ORT_GPU_INSTALL:-0}" == 1 ]]; then
  "$PYTHON" -m pip install -e '.[export]'
  "$PYTHON" -m pip uninstall -y onnxruntime
  # Both packages own the onnxruntime/ folder: reinstall the GPU one whole, then let pip add any missing needs.
  "$PYTHON" -m pip install --force-reinstall --no-deps onnxruntime-gpu
  "$PYTHON" -m pip install onnxruntime-gpu
fi
if [[ -n "${T5ORT_GPU_WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/t5ort-site "$T5ORT_GPU_WHEELS"/*.whl
  export PYTHONPATH="$PWD:/tmp/t5ort-site${PYTHONPATH#"$PWD"}"
fi

if command -v nvidia-smi >/dev/null; then nvidia-smi -L || true; fi
"$PYTHON" -c 'import onnxruntime; print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())'

status=0
timeout "${T5ORT_GPU_TIMEOUT:-290}" "$PYTHON" benchmarks/gpu_check.py "$@" || status=$?
if [[ $status == 124 ]]; then
  echo "gpu_check.py was stopped after ${T5ORT_GPU_TIMEOUT:-290} s" >&2
fi
exit "$status"
