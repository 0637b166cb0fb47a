#!/usr/bin/env bash
# The GPU kit: on a machine with a CUDA GPU, in one call,
#   build     builds dsch_ext in place (dsch_ext/_C*.so) against the machine's python3 and
#             torch, for the visible GPU's architecture;
#   tests     runs the test-suite (the CUDA tests run because a GPU is visible);
#   sanitize  runs the CUDA tests under compute-sanitizer memcheck and racecheck;
#   bench     prints the GPU benchmark report (benchmarks/gpu_report.py: time, % of roofline,
#             ratio to the plain-torch anchor on the same GPU).
# Usage: bash scripts/gpu_check.sh [STEP...]   (default: all four, in that order)
# No network is needed and no venv is made: the machine's python3 (the one holding torch) is
# used with PYTHONPATH at the repository root. Logs go to $OUT (default /tmp/dsch-gpu-out),
# with a copy of the built library, so a later call can skip `build` by bringing the two
# files back (dsch_ext/_C*.so and dsch_ext/_build_info.py are git-ignored paths).
# Each step has a time limit (STEP_LIMIT_S, default 420 s) so one hung step cannot eat a
# whole session; the exit status is non-zero if any step failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/dsch-gpu-out}"
PY="${PYTHON:-python3}"
LIMIT="${STEP_LIMIT_S:-420}"
STEPS="${*:-build tests sanitize bench}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
t0=$SECONDS
step() { echo; echo "=== $* (at $((SECONDS - t0)) s)"; }
# -P: python does not put the working directory on sys.path; PYTHONPATH gives the tree,
# whose dsch_ext/ holds the in-place build.
pytest_cmd() { timeout "$LIMIT" "$PY" -P -m pytest -p no:cacheprovider "$@"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"

for s in $STEPS; do
  case "$s" in
    build)
      step "build (in place)"
      export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" DSCH_EXT_CUDA=1 MAX_JOBS="${MAX_JOBS:-12}"
      export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; p=torch.cuda.get_device_properties(0); print(f"{p.major}.{p.minor}")')}"
      # Build every object and the link with the compiler nvcc uses (the system g++). The
      # device image's python is configured with another GCC (/opt/gcc): linking with it put a
      # second libstdc++'s stream code into _C.so, and the first error message raised from a
      # CUDA file (std::ostream from two libstdc++s) crashed the process.
      if [[ -z "${CC:-}" && -x /usr/bin/g++ ]]; then
        export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared" LDCXXSHARED="/usr/bin/g++ -shared"
      fi
      echo "host compiler: $(${CXX:-g++} --version | head -1)"
      rm -rf build dsch_ext/_C*.so
      if ! timeout "$LIMIT" "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
        tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
      fi
      grep "dsch_ext build" "$OUT/build.log"
      ldd dsch_ext/_C*.so | grep -E "stdc\+\+|cudart" || true
      ldd dsch_ext/_C*.so | grep -q "libstdc++" || echo "WARNING: _C.so does not load the shared libstdc++ (linked statically?)"
      cp dsch_ext/_C*.so dsch_ext/_build_info.py "$OUT/"
      ;;
    tests)
      step "tests (CUDA included)"
      "$PY" -m dsch_ext info
      pytest_cmd tests -q -ra -m "not slow" 2>&1 | tee "$OUT/tests.log" | grep -v "^SKIPPED" | tail -25
      [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "tests: FAILED"; status=1; }
      ;;
    sanitize)
      SAN="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
      command -v compute-sanitizer >/dev/null 2>&1 && SAN=compute-sanitizer
      for tool in memcheck racecheck; do
        step "compute-sanitizer $tool over the CUDA tests"
        timeout "$LIMIT" "$SAN" --tool "$tool" --error-exitcode 99 --target-processes all \
          "$PY" -P -m pytest tests -q -p no:cacheprovider -m "not slow" -k "cuda and not large" \
          > "$OUT/sanitizer-$tool.log" 2>&1
        rc=$?
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race|passed|failed" "$OUT/sanitizer-$tool.log" | sort | uniq -c | tail -12
        [[ $rc -eq 0 ]] || { echo "$tool: exit $rc"; status=1; }
      done
      ;;
    bench)
      step "GPU benchmarks"
      timeout "$LIMIT" "$PY" -P benchmarks/gpu_report.py 2>&1 | tee "$OUT/gpu_report.txt"
      [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "bench: FAILED"; status=1; }
      ;;
    *) echo "unknown step $s (build, tests, sanitize, bench)"; exit 2 ;;
  esac
done
step "done, status $status"
exit $status
