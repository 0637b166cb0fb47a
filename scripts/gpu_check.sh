#!/usr/bin/env bash
# The GPU kit: on a machine with a CUDA GPU, in one call,
#   build     builds dsch_ext in place (dsch_ext/_C*.so) against the machine's python3 and
#             torch, for the visible GPU's architecture;
#   tests     runs the test-suite's GPU half: every test that touches CUDA (the CPU-only tests,
#             the emulation and the compile-time checks already run in CI);
#   sanitize  runs every CUDA op on small shapes (tests/test_gpu_behaviour.py) under
#             compute-sanitizer memcheck, racecheck and synccheck, then memcheck over the
#             CUDA tests as far as the step limit allows;
#   train     a short end-to-end `dsch train --device cuda` (embedded images, 2 rounds) and
#             its E-step / M-step seconds;
#   bench     prints the GPU benchmark report (benchmarks/gpu_report.py: time, % of roofline,
#             ratio to the plain-torch anchor on the same GPU), the binary tensor cores'
#             rate against the POPC pipe (benchmarks/bmma_rate.cu), then the recorded
#             static bounds of the same workloads (benchmarks/sass_bounds.json).
# Usage: bash scripts/gpu_check.sh [STEP...]   (default: build tests bench train sanitize)
# The default order puts the measurements before the slowest checks, and the whole run keeps
# inside TOTAL_LIMIT_S (default 480 s: inside a device call's 10 minutes, and with a machine's
# start it leaves about 5 minutes of a 15-minute lease for a shorter second call, a rerun of
# the steps that failed): each step's limit is cut to the time left, and a step with under
# 20 s left is skipped and named (exit status 1).
# No network is needed and no venv is made: the machine's python3 (the one holding torch) is
# used with PYTHONPATH at the repository root. Logs go to $OUT (default /tmp/dsch-gpu-out),
# with a copy of the built library, so a later call can skip `build` by bringing the two
# files back (dsch_ext/_C*.so and dsch_ext/_build_info.py are git-ignored paths).
# Each step has a time limit (STEP_LIMIT_S, default 150 s; the report BENCH_LIMIT_S, default
# 240 s, and it prints each group of rows as it is measured) so one hung step cannot use up
# the machine's time, and prints how long it took; the exit status is non-zero if any step
# failed or was skipped.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/dsch-gpu-out}"
PY="${PYTHON:-python3}"
STEP_LIMIT="${STEP_LIMIT_S:-150}"
TOTAL_LIMIT="${TOTAL_LIMIT_S:-480}"
STEPS="${*:-build tests bench train sanitize}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
t0=$SECONDS
last=$SECONDS
step() { echo; echo "=== $* (at $((SECONDS - t0)) s; previous step took $((SECONDS - last)) s)"; last=$SECONDS; }
seconds_left() { echo $((TOTAL_LIMIT - (SECONDS - t0) - 5)); }
# limit_for SECONDS: a step's own limit cut to what is left of TOTAL_LIMIT, at least 1 s
# (timeout reads 0 as no limit) (sets LIMIT).
limit_for() {
  local left; left=$(seconds_left)
  LIMIT=$(( $1 < left ? $1 : left ))
  (( LIMIT >= 1 )) || LIMIT=1
}
# out_of_time NAME: true (and the step named, the status set) when under 20 s are left.
out_of_time() {
  (( $(seconds_left) >= 20 )) && return 1
  echo; echo "=== $1: skipped, $((SECONDS - t0)) s of TOTAL_LIMIT_S=$TOTAL_LIMIT used"; status=1
}
# -P: python does not put the working directory on sys.path; PYTHONPATH gives the tree,
# whose dsch_ext/ holds the in-place build.
pytest_cmd() { timeout "$LIMIT" "$PY" -P -m pytest -p no:cacheprovider "$@"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"

for s in $STEPS; do
  out_of_time "$s" && continue
  limit_for "$STEP_LIMIT"
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
      pytest_cmd tests -q -ra -m "not slow and not emulation" -k "cuda or gpu" 2>&1 | tee "$OUT/tests.log" | grep -v "^SKIPPED" | tail -25
      [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "tests: FAILED"; status=1; }
      ;;
    sanitize)
      SAN="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
      command -v compute-sanitizer >/dev/null 2>&1 && SAN=compute-sanitizer
      for tool in memcheck racecheck synccheck; do
        out_of_time "compute-sanitizer $tool" && continue
        limit_for "$STEP_LIMIT"
        step "compute-sanitizer $tool, every CUDA op on small shapes"
        timeout "$LIMIT" "$SAN" --tool "$tool" --error-exitcode 99 --target-processes all \
          "$PY" -P -m pytest tests/test_gpu_behaviour.py -q -p no:cacheprovider -m "not large" -k "not graph" \
          > "$OUT/sanitizer-$tool.log" 2>&1
        rc=$?
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race|passed|failed" "$OUT/sanitizer-$tool.log" | sort | uniq -c | tail -12
        [[ $rc -eq 0 ]] || { echo "$tool: exit $rc"; status=1; }
      done
      out_of_time "compute-sanitizer memcheck over the CUDA tests" && continue
      limit_for "$STEP_LIMIT"
      step "compute-sanitizer memcheck over the CUDA tests (as far as $LIMIT s allow)"
      timeout "$LIMIT" "$SAN" --tool memcheck --error-exitcode 99 --target-processes all \
        "$PY" -P -m pytest tests -q -p no:cacheprovider -m "not slow and not large and not emulation" -k cuda \
        > "$OUT/sanitizer-memcheck-suite.log" 2>&1
      rc=$?
      grep -E "ERROR SUMMARY|Invalid|passed|failed" "$OUT/sanitizer-memcheck-suite.log" | sort | uniq -c | tail -6
      [[ $rc -eq 0 || $rc -eq 124 ]] || { echo "memcheck suite: exit $rc"; status=1; }
      [[ $rc -eq 124 ]] && echo "(memcheck suite stopped at the step limit; the errors above are all it saw)"
      ;;
    train)
      step "end-to-end: dsch train --device cuda (embedded images, 32 bits, 2 rounds)"
      rm -rf "$OUT/train"
      timeout "$LIMIT" "$PY" -m dsch_ext train --data embedded --bits 32 --rounds 2 --device cuda \
        --out "$OUT/train" > "$OUT/train.log" 2>&1
      rc=$?
      tail -5 "$OUT/train.log"
      "$PY" - "$OUT/train/record.json" <<'PY' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
for i, rnd in enumerate(r["history"]["rounds"]):
    print(f"round {i + 1}: E-step {rnd['estep_seconds']:.2f} s, M-step {rnd['mstep_seconds']:.2f} s")
print(f"train {r['train_seconds']:.1f} s, mAP@1000 {r.get('metrics', {}).get('mAP@1000', 'n/a')}")
PY
      [[ $rc -eq 0 ]] || { echo "train: exit $rc"; status=1; }
      ;;
    bench)
      step "GPU benchmarks"
      limit_for "${BENCH_LIMIT_S:-240}"
      timeout "$LIMIT" "$PY" -P benchmarks/gpu_report.py 2>&1 | tee "$OUT/gpu_report.txt"
      [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "bench: FAILED"; status=1; }
      # Binary tensor cores against the POPC pipe (benchmarks/bmma_rate.cu): decides whether a
      # BMMA scan is worth designing.
      NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
      if "$NVCC" -O3 -arch=native benchmarks/bmma_rate.cu -o "$OUT/bmma_rate" > "$OUT/bmma_build.log" 2>&1; then
        limit_for 60
        timeout "$LIMIT" "$OUT/bmma_rate" 2>&1 | tee -a "$OUT/gpu_report.txt"
        [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "bmma_rate: FAILED"; status=1; }
      else
        tail -5 "$OUT/bmma_build.log"; echo "bmma_rate: did not build"; status=1
      fi
      # Beside the measured times: the static bounds of the same kernels (benchmarks/sass_bounds.py).
      echo "static bounds from the sm_90 SASS (H100 clocks; an upper bound on speed, not a measurement):" | tee -a "$OUT/gpu_report.txt"
      "$PY" -P benchmarks/sass_bounds.py --recorded 2>&1 | tee -a "$OUT/gpu_report.txt"
      ;;
    *) echo "unknown step $s (build, tests, sanitize, train, bench)"; exit 2 ;;
  esac
done
step "done, status $status"
exit $status
