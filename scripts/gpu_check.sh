#!/usr/bin/env bash
# The GPU kit: on a machine with a CUDA GPU, in one call,
#   1. builds dsch_ext from source against the installed torch (sm of the visible GPU),
#   2. runs the test-suite (CUDA tests run because a GPU is visible),
#   3. runs the CUDA tests under compute-sanitizer memcheck and racecheck,
#   4. runs the GPU benchmark report (time and % of roofline), printed last.
# Uses the machine's python3 and torch (no network needed): a venv with system site packages.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DSCH_GPU_VENV:-/tmp/dsch-gpu-venv}"
OUT="${OUT:-/tmp/dsch-gpu-out}"
mkdir -p "$OUT"
cd "$ROOT"
status=0
step() { echo; echo "=== $*"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

step "build"
[[ -x "$VENV/bin/python" ]] || python3 -m venv --system-site-packages "$VENV"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" DSCH_EXT_CUDA=1 MAX_JOBS="${MAX_JOBS:-8}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; p=torch.cuda.get_device_properties(0); print(f"{p.major}.{p.minor}")')}"
rm -rf build
if ! "$VENV/bin/pip" install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1; then
  tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
PY="$VENV/bin/python"
"$PY" -m dsch_ext info

step "tests (CUDA included)"
"$PY" -m pytest tests -q -ra -p no:cacheprovider -m "not slow" 2>&1 | tee "$OUT/tests.log" | tail -15
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1

SAN="${CUDA_HOME}/bin/compute-sanitizer"
command -v compute-sanitizer >/dev/null 2>&1 && SAN=compute-sanitizer
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool over the CUDA tests"
  "$SAN" --tool "$tool" --error-exitcode 99 --target-processes all \
    "$PY" -m pytest tests -q -p no:cacheprovider -m "not slow" -k "cuda and not large" > "$OUT/sanitizer-$tool.log" 2>&1
  rc=$?
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -5
  [[ $rc -eq 0 ]] || { echo "$tool: exit $rc"; status=1; }
done

step "GPU benchmarks"
"$PY" benchmarks/gpu_report.py 2>&1 | tee "$OUT/gpu_report.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
exit $status
