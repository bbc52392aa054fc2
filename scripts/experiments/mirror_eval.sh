#!/bin/bash
# The mirrored draws (`refsr sample --mirror`) against the shipped sampling, as in docs/results.md
# run 11: the shipped model, its recommended sampling (4 DDIM steps from 0.5, 4 draws, wavelet),
# with and without --mirror, on the held-out birds (val: where it was chosen; test: the 70 of
# runs 3-7) and the 15 general test photos, with matched references and without.
#   scripts/experiments/mirror_eval.sh [STAGE...]     stages: val test general (default: all)
# Knobs: WORK [work/mirror] MODEL [refsr/weights/default] VAL [work/ft/pairs_val/manifest.jsonl]
#   VAL_MATCHES [work/ft/matches_val.jsonl] TEST [work/eval/pairs_test/manifest70.jsonl]
#   TEST_MATCHES [work/eval/matches_test.jsonl] PACK [gpu_data] INDEX [work/ft/refs.index: the
#   training photos, scripts/experiments/clip_small_random.json]
set -euo pipefail
STAGES=${STAGES:-${*:-val test general}}
WORK=${WORK:-work/mirror}; MODEL=${MODEL:-refsr/weights/default}
VAL=${VAL:-work/ft/pairs_val/manifest.jsonl}; VAL_MATCHES=${VAL_MATCHES:-work/ft/matches_val.jsonl}
TEST=${TEST:-work/eval/pairs_test/manifest70.jsonl}; TEST_MATCHES=${TEST_MATCHES:-work/eval/matches_test.jsonl}
PACK=${PACK:-gpu_data}; INDEX=${INDEX:-work/ft/refs.index}
has() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$WORK/eval"

run() {  # NAME MANIFEST MATCHES|- MIRROR(--mirror|--no-mirror): restore with the model's sampling, then score
  local with=(); [ "$3" != - ] && with=(--matches "$3")
  refsr -q sample --model "$MODEL" "$2" "${with[@]}" "$4" --seed 0 --device cpu -o "$WORK/restored/$1"
  refsr -q evaluate --pred "$WORK/restored/$1" --gt "$2" --metrics psnr,ssim,niqe -o "$WORK/eval/report_$1.json" \
      --csv "$WORK/eval/per_image_$1.csv" --device cpu --overwrite > "$WORK/eval/eval_$1.txt"
  echo "== $1"; head -n 5 "$WORK/eval/eval_$1.txt"
}
paired() { echo "== $2 vs $1"; python scripts/experiments/paired.py "$WORK/eval/per_image_$1.csv" "$WORK/eval/per_image_$2.csv"; }

if has general; then  # the pairs and matches of docs/results.md run 6
  [ -s "$WORK/pairs_general/manifest.jsonl" ] || refsr -q degrade $(sed "s|^|$PACK/split/|" "$PACK/split/test_general.txt") \
      -o "$WORK/pairs_general" --crop 224 --seed 0
  [ -s "$WORK/matches_general.jsonl" ] || refsr -q match "$WORK/pairs_general/manifest.jsonl" --index "$INDEX" \
      -o "$WORK/matches_general.jsonl" --query lr --group-by parent --top-images 10 --top-refs 10 --window 224 \
      --stride 112 --device cpu
fi
for split in val test general; do
  has $split || continue
  case $split in val) m=$VAL; mt=$VAL_MATCHES;; test) m=$TEST; mt=$TEST_MATCHES;;
                 general) m=$WORK/pairs_general/manifest.jsonl; mt=$WORK/matches_general.jsonl;; esac
  for mirror in no-mirror mirror; do
    run "${split}_$mirror" "$m" "$mt" --$mirror
    [ $split = val ] || run "${split}_${mirror}_norefs" "$m" - --$mirror
  done
  paired ${split}_no-mirror ${split}_mirror
  [ $split = val ] || { paired ${split}_no-mirror_norefs ${split}_mirror_norefs; paired ${split}_mirror_norefs ${split}_mirror; }
done
