#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: the default training run (the built-in
# procedurally generated patterns dataset, EfficientNet "tiny" at 64 px; see README "Training").
# Extra arguments go to train_efficientnet, e.g. `bash scripts/train.sh --data-dir flowers`.
# Rerunning resumes from the run's workdir (default runs/patterns-tiny); remove it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train
exec .venv/bin/python -m flax_effnet.train "$@"
