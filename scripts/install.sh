#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and builds dsch_ext into it.
#
#   bash scripts/install.sh            # .venv, CUDA torch when nvcc exists, else CPU torch
#   DSCH_TORCH=cpu bash scripts/install.sh
#   DSCH_VENV=/path/venv DSCH_EXTRAS=test bash scripts/install.sh
#
# Environment:
#   DSCH_VENV    where the venv goes (default: .venv in the repository)
#   DSCH_TORCH   auto | cuda | cpu | a pip requirement ("torch==2.14.1"); auto picks cuda when
#                nvcc is found (the CUDA kernels then compile), else cpu
#   DSCH_BUILD   fast (default): pip install --no-build-isolation against the venv's torch;
#                isolated: plain `pip install .` (PEP 517 isolation; slower, also supported)
#   DSCH_EXTRAS  extras to install, e.g. "test"
#   DSCH_VISION  1: also install the torchvision that pairs with the CUDA torch (0.29.1 with
#                2.14.1), for the pretrained backbones; PyPI's torchvision does not load beside
#                the CPU-only torch 2.13.0 build, so the cpu choice installs none
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DSCH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH="${DSCH_TORCH:-auto}"
BUILD="${DSCH_BUILD:-fast}"
EXTRAS="${DSCH_EXTRAS:-}"

CUDA_HOME_GUESS="${CUDA_HOME:-/usr/local/cuda}"
if [[ "$TORCH" == auto ]]; then
  if [[ -x "$CUDA_HOME_GUESS/bin/nvcc" ]] || command -v nvcc >/dev/null 2>&1; then TORCH=cuda; else TORCH=cpu; fi
fi
VISION_REQ=""
case "$TORCH" in
  cuda) TORCH_REQ="torch==2.14.1"; VISION_REQ="torchvision==0.29.1" ;;   # CUDA 13.0 build, matches nvcc 13.0
  cpu) TORCH_REQ="torch==2.13.0" ;;    # CPU-only build (1 GB instead of 5.5 GB)
  *) TORCH_REQ="$TORCH" ;;
esac
[[ "${DSCH_VISION:-0}" == 1 ]] || VISION_REQ=""

echo "[install] venv $VENV, $TORCH_REQ, build mode $BUILD"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade "pip>=23" "setuptools>=77" wheel ninja numpy
"${PIP[@]}" install -q "$TORCH_REQ" $VISION_REQ

TARGET="$ROOT"
[[ -n "$EXTRAS" ]] && TARGET="$ROOT[$EXTRAS]"
export MAX_JOBS="${MAX_JOBS:-2}"
if [[ -x "$CUDA_HOME_GUESS/bin/nvcc" ]]; then export CUDA_HOME="$CUDA_HOME_GUESS"; fi
if [[ "$BUILD" == isolated ]]; then
  "${PIP[@]}" install -q "$TARGET"
else
  "${PIP[@]}" install -q --no-build-isolation "$TARGET"
fi
"$VENV/bin/dsch" info
