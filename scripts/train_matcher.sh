#!/usr/bin/env bash
# Recipe of the shipped CPU-sized patch matcher (refsr train matcher).
# Trains on ../shared/data/general (CBSD68 + CSun_Hays80), holding out 20% of the images
# (by image, seeded) for the location-accuracy evaluation printed at the end and written
# to RUN/eval.json. About 15 minutes on 2 CPU cores shared with other jobs (1-4 s per step); on a GPU raise --steps,
# --patch and --batch-size (e.g. --steps 5000 --patch 128 --batch-size 128 --device cuda),
# and use `accelerate launch --num_processes N -m refsr_cli train matcher ...` for N GPUs.
#
# Usage: scripts/train_matcher.sh [DATA] [RUN] [extra refsr train matcher options...]
set -euo pipefail
DATA=${1:-../shared/data/general}
RUN=${2:-runs/matcher-general}
shift $(( $# > 2 ? 2 : $# ))
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m refsr_cli train matcher "$DATA" -o "$RUN" \
    --init none --arch resnet34 --depth 3 --head-dim 128 --patch 64 --scale 4 \
    --max-side 384 --holdout 0.2 --eval-queries 2 \
    --steps 600 --batch-size 16 --lr 1e-3 --warmup 30 --ema-decay 0.99 --temperature 0.07 \
    --checkpoint-every 100 --validate-every 0 --log-every 10 --device cpu --seed 0 "$@"
