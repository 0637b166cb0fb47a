#!/usr/bin/env bash
# The test command (README "Quick start", and what .ci/run runs). On a fresh machine it:
#  1. builds dsch_ext in .venv against the CUDA torch build and its torchvision (the CUDA kernels compile even
#     with no GPU; they are tested when one is visible), the fast --no-build-isolation way,
#     builds the CUDA kernels for the CPU emulation (plain, ThreadSanitizer, AddressSanitizer +
#     UBSan: tests/emulation_build.py), runs tests/ (the CMake build, the emulated kernels and
#     the ptxas checks included) and benchmarks/ in quick mode, then the emulated kernels under
#     both sanitizers (scripts/test_emulation_sanitizers.sh);
#  2. builds it in .venv-cpu against the CPU-only torch with plain `pip install .` (the
#     isolated PEP 517 path) and runs the suite there too.
# Each pytest run spreads its tests over pytest-xdist workers, one per CPU (most tests keep one
# core busy); DSCH_TEST_WORKERS sets the number (0: no workers, one process).
# DSCH_TEST_STAGES="cuda cpu" picks stages; extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGES="${DSCH_TEST_STAGES:-cuda cpu}"
WORKERS="${DSCH_TEST_WORKERS:-logical}"
cd "$ROOT"

run_suite() {  # venv, pytest args...
  local venv="$1"; shift
  # Run from the repository root with the venv's pytest: the tests import the installed
  # dsch_ext (pytest does not put the root on sys.path), never the unbuilt source tree.
  "$venv/bin/pytest" tests benchmarks --benchmark-disable -q -ra -p no:cacheprovider -n "$WORKERS" "$@"
}

start=$SECONDS
for stage in $STAGES; do
  rm -rf "$ROOT/build"  # objects of another torch must not be reused
  case "$stage" in
    cuda)
      echo "=== stage cuda: CUDA torch, --no-build-isolation build, full suite"
      DSCH_VENV="$ROOT/.venv" DSCH_TORCH=cuda DSCH_EXTRAS=test DSCH_VISION=1 bash scripts/install.sh
      echo "=== building the emulated CUDA kernels (plain, production, tsan, asan) at $((SECONDS - start)) s"
      "$ROOT/.venv/bin/python" tests/emulation_build.py --variant plain production tsan asan
      DSCH_REQUIRE_SANITIZERS=1 run_suite "$ROOT/.venv" "$@"
      echo "=== emulated CUDA kernels under the sanitizers at $((SECONDS - start)) s"
      VENV="$ROOT/.venv" bash scripts/test_emulation_sanitizers.sh
      ;;
    cpu)
      echo "=== stage cpu: CPU-only torch, plain 'pip install .', suite without the slow tests and the emulation (run above)"
      DSCH_VENV="$ROOT/.venv-cpu" DSCH_TORCH=cpu DSCH_BUILD=isolated DSCH_EXTRAS=test bash scripts/install.sh
      run_suite "$ROOT/.venv-cpu" -m "not slow and not emulation" "$@"
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
  echo "=== stage $stage done at $((SECONDS - start)) s"
done
