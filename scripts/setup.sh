#!/usr/bin/env bash
# Creates .venv (if missing) and installs flax_effnet into it. Safe to re-run: pip skips what
# is already satisfied.
#   bash scripts/setup.sh train   the trainer only (what `scripts/train.sh` needs; no PyTorch)
#   bash scripts/setup.sh test    everything: CPU PyTorch, the converter, the reference
#                                 PyTorch models, the test tools and the benchmarks' inference
#                                 engines (ONNX Runtime, OpenVINO): what `scripts/test.sh` needs
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
case "$MODE" in
  train)
    "${PIP[@]}" -e ".[train]"
    ;;
  test)
    # The CPU build of torch, pinned by its local version `+cpu`: PyPI's torch wheels are CUDA
    # builds (GBs), and PyPI carries no `+cpu` version, so where no local or configured index
    # has it, it comes from PyTorch's CPU index. Installed first, so nothing below pulls another.
    TORCH="torch==2.13.0+cpu"
    "${PIP[@]}" "$TORCH" 2>/dev/null \
      || "${PIP[@]}" "$TORCH" --extra-index-url https://download.pytorch.org/whl/cpu
    "${PIP[@]}" -e ".[all]"
    # Reference model code for the equivalence tests. Their metadata asks for a newer torch (and
    # torchvision's compiled ops do not match the CPU torch), so: no deps (effdet's pure-Python
    # ones, omegaconf and pycocotools, come with the test extra);
    # flax_effnet.convert.verify.import_torchvision registers the two op schemas its import needs.
    "${PIP[@]}" --no-deps "torchvision==0.28.0" "timm==1.0.31" "effdet==0.4.1"
    # ONNX export: jax2onnx pins orbax-checkpoint<0.11.37 (the trainer needs >=0.12.8) though
    # it never imports orbax for export; its imported dependencies are the `export` extra.
    "${PIP[@]}" --no-deps "jax2onnx==0.17.1"
    ;;
  *)
    echo "usage: bash scripts/setup.sh [train|test]" >&2
    exit 2
    ;;
esac
