#!/usr/bin/env bash
# Runs tests/test_emulation.py and the emulated cases of tests/test_tensor_core_accuracy.py (the
# CUDA kernels on the CPU emulation) under ThreadSanitizer and under AddressSanitizer +
# UndefinedBehaviorSanitizer. Each run is a Python started with
# the sanitizer runtime preloaded that loads the matching build of the emulation library
# (tests/emulation_build.py --variant tsan asan builds them; this script does too). A data
# race, an out-of-bounds access or undefined behaviour ends the run with a report and a
# non-zero status. The plain emulation run (scripts/test.sh) takes every case; here each test
# takes its first parameter set and a fixed quarter of the others (tests/conftest.py),
# as the sanitizers run the kernels many times slower: DSCH_EMULATION_CASES=all takes every one.
# The cases are spread over pytest-xdist workers, one per CPU (DSCH_TEST_WORKERS sets the number):
# the emulator keeps about one core busy.
#   VENV=.venv bash scripts/test_emulation_sanitizers.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/python" tests/emulation_build.py --variant tsan asan >/dev/null
for variant in ${DSCH_SANITIZERS:-tsan asan}; do
  start=$SECONDS
  echo "=== emulated CUDA kernels under $variant"
  # Loading the library is all a sanitizer needs; the environment comes from emulation_build.
  env_cmd=$("$VENV/bin/python" - "$variant" <<'PY'
import shlex, sys
sys.path.insert(0, "tests")
import emulation_build
env = emulation_build.sanitizer_env(sys.argv[1], env={})
print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
PY
)
  # The sanitizer-detection tests start their own sanitizer subprocesses; skip them here.
  eval "env $env_cmd DSCH_EMULATION_CASES=${DSCH_EMULATION_CASES:-sample} $VENV/bin/pytest tests/test_emulation.py tests/test_tensor_core_accuracy.py -m emulation -q -p no:cacheprovider -k 'not sanitizers_catch' --capture=sys -n ${DSCH_TEST_WORKERS:-logical} $*"
  echo "=== $variant done in $((SECONDS - start)) s"
done
