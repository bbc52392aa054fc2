#!/bin/bash
# The `luma` colour fix (`refsr sample --color-fix luma`) against `wavelet`, as in docs/results.md
# run 12: the shipped model and its recommended sampling otherwise (4 DDIM steps from 0.5, 4
# draws, two mirrored), with matched references, on the validation birds (where it was chosen),
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
. "$(dirname "$0")/heldout.sh"  # the splits, their knobs, STAGES and has()

evaluate() {  # NAME PRED MANIFEST: Y (PSNR, SSIM, NIQE) and RGB (PSNR, SSIM)
  refsr -q evaluate --pred "$2" --gt "$3" --metrics psnr,ssim,niqe -o "$WORK/eval/report_$1.json" \
      --csv "$WORK/eval/per_image_$1.csv" --device cpu --overwrite > "$WORK/eval/eval_$1.txt"
  refsr -q evaluate --pred "$2" --gt "$3" --metrics psnr,ssim --color rgb -o "$WORK/eval/report_$1_rgb.json" \
      --csv "$WORK/eval/per_image_$1_rgb.csv" --device cpu --overwrite > "$WORK/eval/eval_$1_rgb.txt"
  echo "== $1"; sed -n 3,5p "$WORK/eval/eval_$1.txt"; sed -n 3,4p "$WORK/eval/eval_$1_rgb.txt"
}

has general && general_data
for split in val test general; do
  has $split || continue
  split_data $split
  python -c "import sys; from refsr.demo import bicubic_baseline as b; b(sys.argv[1], sys.argv[2])" \
      "$m" "$WORK/restored/${split}_bicubic"
  evaluate "${split}_bicubic" "$WORK/restored/${split}_bicubic" "$m"
  for fix in wavelet luma; do
    refsr -q sample --model "$MODEL" "$m" --matches "$mt" --color-fix $fix --seed 0 --device cpu -o "$WORK/restored/${split}_$fix"
    evaluate "${split}_$fix" "$WORK/restored/${split}_$fix" "$m"
  done
  paired ${split}_wavelet ${split}_luma; paired ${split}_wavelet_rgb ${split}_luma_rgb; paired ${split}_bicubic_rgb ${split}_luma_rgb
done
