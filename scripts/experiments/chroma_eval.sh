#!/bin/bash
# The `luma` colour fix (`refsr sample --color-fix luma`) against `wavelet`, as in docs/results.md
# run 12: the shipped model and its recommended sampling then (4 DDIM steps from 0.5, 4
# draws, two mirrored, 5 wavelet levels), with matched references, on the validation birds (where it was chosen),
# the test birds (the 70 of runs 3-11) and the 15 general test photos; PSNR/SSIM on the Y channel
# (with NIQE) and on RGB, and bicubic upsampling on RGB.
#   scripts/experiments/chroma_eval.sh [STAGE...]     stages: val test general (default: all)
# Knobs: WORK [work/chroma] MODEL [refsr/weights/default] VAL [work/ft/pairs_val/manifest.jsonl]
#   VAL_MATCHES [work/ft/matches_val.jsonl] TEST [work/eval/pairs_test/manifest70.jsonl]
#   TEST_MATCHES [work/eval/matches_test.jsonl] PACK [gpu_data] INDEX [work/ft/refs.index: the
#   training photos, scripts/experiments/clip_small_random.json] (made as scripts/experiments/finetune_cpu.sh
#   makes them: its data and testdata stages)
set -euo pipefail
WORK=${WORK:-work/chroma}; MODEL=${MODEL:-refsr/weights/default}
. "$(dirname "$0")/heldout.sh"  # the splits, their knobs, STAGES, has(), each_split(), evaluate(), bicubic() and paired()

score() {  # SPLIT: bicubic, wavelet and luma, scored and paired
  local split=$1 fix
  bicubic "${split}_bicubic" "$m"
  for fix in wavelet luma; do
    refsr -q sample --model "$MODEL" "$m" --matches "$mt" --color-fix $fix --color-fix-levels 5 --seed 0 --device cpu -o "$WORK/restored/${split}_$fix"
    evaluate "${split}_$fix" "$WORK/restored/${split}_$fix" "$m"
  done
  paired ${split}_wavelet ${split}_luma; paired ${split}_wavelet_rgb ${split}_luma_rgb; paired ${split}_bicubic_rgb ${split}_luma_rgb
}
each_split score
