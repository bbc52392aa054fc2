#!/bin/bash
# The mirrored draws (`refsr sample --mirror`) against the shipped sampling, as in docs/results.md
# run 11: the shipped model, its recommended sampling then (4 DDIM steps from 0.5, 4 draws, wavelet
# with 5 levels),
# with and without --mirror, on the held-out birds (val: where it was chosen; test: the 70 of
# runs 3-7) and the 15 general test photos, with matched references and without.
#   scripts/experiments/mirror_eval.sh [STAGE...]     stages: val test general (default: all)
# Knobs: WORK [work/mirror] MODEL [refsr/weights/default] VAL [work/ft/pairs_val/manifest.jsonl]
#   VAL_MATCHES [work/ft/matches_val.jsonl] TEST [work/eval/pairs_test/manifest70.jsonl]
#   TEST_MATCHES [work/eval/matches_test.jsonl] PACK [gpu_data] INDEX [work/ft/refs.index: the
#   training photos, scripts/experiments/clip_small_random.json]
set -euo pipefail
WORK=${WORK:-work/mirror}; MODEL=${MODEL:-refsr/weights/default}
. "$(dirname "$0")/heldout.sh"  # the splits, their knobs, STAGES, has(), each_split(), evaluate(), bicubic() and paired()

run() {  # NAME MANIFEST MATCHES|- MIRROR(--mirror|--no-mirror): restore with the model's sampling, then score
  local with=(); [ "$3" != - ] && with=(--matches "$3")
  refsr -q sample --model "$MODEL" "$2" "${with[@]}" "$4" --color-fix wavelet --color-fix-levels 5 --seed 0 \
      --device cpu -o "$WORK/restored/$1"
  evaluate "$1" "$WORK/restored/$1" "$2"
}

score() {  # SPLIT: without and with --mirror (and, but on val, without references), scored and paired
  local split=$1 mirror
  for mirror in no-mirror mirror; do
    run "${split}_$mirror" "$m" "$mt" --$mirror
    [ $split = val ] || run "${split}_${mirror}_norefs" "$m" - --$mirror
  done
  paired ${split}_no-mirror ${split}_mirror
  [ $split = val ] || { paired ${split}_no-mirror_norefs ${split}_mirror_norefs; paired ${split}_mirror_norefs ${split}_mirror; }
}
each_split score
