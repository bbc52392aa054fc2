#!/usr/bin/env bash
# Retrain the shipped default model (refsr/weights/default/) and export it as float16.
#
# It is the LDM+CA model of the reference ablation (scripts/experiments/ref_ablation.sh):
# small config, birds training split, Real-ESRGAN x4 pairs of 224 px, references = other photos
# of the same species. The shipped weights came from this recipe on one H100 (16 CPU cores):
#   VQ autoencoder 509 steps (0.6-minute cap), ldm-ca 710 steps (1.6-minute cap), batch 64.
#
#   usage: scripts/train_default_model.sh [BIRDS_DIR] [WORK_DIR]
# Knobs as in ref_ablation.sh; the defaults below reproduce the shipped run on a GPU.
set -euo pipefail
BIRDS=${1:-../shared/data/birds}; WORK=${2:-work/default_model}
export DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-64} WORKERS=${WORKERS:-12}
export AE_STEPS=${AE_STEPS:-800} AE_MAX_MINUTES=${AE_MAX_MINUTES:-0.6} STEPS=${STEPS:-1500} MAX_MINUTES=${MAX_MINUTES:-1.6}
STAGES="split degrade index match train" scripts/experiments/ref_ablation.sh "$BIRDS" "$WORK"
python3 - "$WORK/runs/ldm-ca/model" refsr/weights/default <<'PY'
"""Copy a model folder, storing floating-point weights as float16 (they load as float32)."""
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
for f in dst.rglob("*.safetensors"):
    sd = load_file(f)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f)
print(f"exported {dst}")
PY
