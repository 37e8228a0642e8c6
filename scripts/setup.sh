#!/usr/bin/env bash
# Creates .venv (if missing) and installs flax_effnet with everything the trainer, converter
# and tests need. Safe to re-run: pip skips what is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first and pinned to its CPU build: any unpinned spec would pull GBs of CUDA wheels,
# and once 2.13.0 is installed the `torch>=2.1` of the convert extra is already satisfied.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[all]"
# Reference model code for the equivalence tests. Their metadata asks for a newer torch (and
# torchvision's compiled ops do not match the CPU torch), so: no deps; tests/conftest.py
# registers the two op schemas torchvision's import needs.
"${PIP[@]}" --no-deps "torchvision==0.28.0" "timm==1.0.31"
