#!/bin/bash
# The wavelet levels of the colour fix (`refsr sample --color-fix-levels`), as in docs/results.md
# run 13: the shipped model and its recommended sampling otherwise (4 DDIM steps from 0.5, 4 draws,
# two mirrored, the luma fix), with 5 levels (StableSR's; the shipped sampling of run 12) and with 4,
# with matched references, on the validation birds (where 4 was chosen), the test birds (the 70 of
# runs 3-12) and the 15 general test photos; PSNR/SSIM on the Y channel (with NIQE) and on RGB.
#   scripts/experiments/levels_eval.sh [STAGE...]     stages: val test general (default: all)
# Knobs: WORK [work/levels] MODEL [refsr/weights/default] LEVELS ["5 4"] VAL [work/ft/pairs_val/manifest.jsonl]
#   VAL_MATCHES [work/ft/matches_val.jsonl] TEST [work/eval/pairs_test/manifest70.jsonl]
#   TEST_MATCHES [work/eval/matches_test.jsonl] PACK [gpu_data] INDEX [work/ft/refs.index: the
#   training photos, scripts/experiments/clip_small_random.json] (made as scripts/experiments/finetune_cpu.sh
#   makes them: its data and testdata stages)
set -euo pipefail
WORK=${WORK:-work/levels}; MODEL=${MODEL:-refsr/weights/default}; LEVELS=${LEVELS:-5 4}
. "$(dirname "$0")/heldout.sh"  # the splits, their knobs, STAGES, has(), each_split(), evaluate(), bicubic(), paired() and paired_all()

score() {  # SPLIT: bicubic, then each of LEVELS, scored and paired
  local split=$1 levels name names=()
  bicubic "${split}_bicubic" "$m"
  for levels in $LEVELS; do
    name=${split}_luma$levels; names+=("$name")
    refsr -q sample --model "$MODEL" "$m" --matches "$mt" --color-fix luma --color-fix-levels "$levels" --seed 0 \
        --device cpu -o "$WORK/restored/$name"
    evaluate "$name" "$WORK/restored/$name" "$m"
  done
  paired_all "$split" "${names[@]}"
}
each_split score
