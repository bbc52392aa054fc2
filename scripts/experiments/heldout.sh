# Sourced by mirror_eval.sh, chroma_eval.sh, levels_eval.sh and pixel_eval.sh (after they set WORK): the held-out
# splits of docs/results.md runs 6-14, their knobs (documented by the callers), the stages to run
# (the caller's arguments or STAGES, default all), has STAGE, each_split FN, and the scoring (evaluate, paired, paired_all).
STAGES=${STAGES:-${*:-val test general}}
VAL=${VAL:-work/ft/pairs_val/manifest.jsonl}; VAL_MATCHES=${VAL_MATCHES:-work/ft/matches_val.jsonl}
TEST=${TEST:-work/eval/pairs_test/manifest70.jsonl}; TEST_MATCHES=${TEST_MATCHES:-work/eval/matches_test.jsonl}
PACK=${PACK:-gpu_data}; INDEX=${INDEX:-work/ft/refs.index}
has() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$WORK/eval"

general_data() {  # the 15 general test photos: pairs and matches as in run 6
  [ -s "$WORK/pairs_general/manifest.jsonl" ] || refsr -q degrade $(sed "s|^|$PACK/split/|" "$PACK/split/test_general.txt") \
      -o "$WORK/pairs_general" --crop 224 --seed 0
  [ -s "$WORK/matches_general.jsonl" ] || refsr -q match "$WORK/pairs_general/manifest.jsonl" --index "$INDEX" \
      -o "$WORK/matches_general.jsonl" --query lr --group-by parent --top-images 10 --top-refs 10 --window 224 \
      --stride 112 --device cpu
}

split_data() {  # SPLIT (val, test or general): sets m (its pair manifest) and mt (its matches)
  case $1 in val) m=$VAL; mt=$VAL_MATCHES;; test) m=$TEST; mt=$TEST_MATCHES;;
             general) m=$WORK/pairs_general/manifest.jsonl; mt=$WORK/matches_general.jsonl;; esac
}

each_split() {  # FN: FN SPLIT for each split STAGES asks for (val, test, general), with m and mt set
  local split
  has general && general_data
  for split in val test general; do
    has $split || continue
    split_data $split
    "$1" $split
  done
}

paired() {  # A B: B against A, per image (WORK/eval/per_image_*.csv)
  echo "== $2 vs $1"; python scripts/experiments/paired.py "$WORK/eval/per_image_$1.csv" "$WORK/eval/per_image_$2.csv"
}

paired_all() {  # SPLIT NAME...: each NAME against the first, and the last against SPLIT's bicubic; Y and RGB
  local split=$1 first=$2 last=${!#} name; shift 2
  for name in "$@"; do paired "$first" "$name"; paired "${first}_rgb" "${name}_rgb"; done
  paired "${split}_bicubic" "$last"; paired "${split}_bicubic_rgb" "${last}_rgb"
}

evaluate() {  # NAME PRED MANIFEST: Y (PSNR, SSIM, NIQE) and RGB (PSNR, SSIM) into WORK/eval
  refsr -q evaluate --pred "$2" --gt "$3" --metrics psnr,ssim,niqe -o "$WORK/eval/report_$1.json" \
      --csv "$WORK/eval/per_image_$1.csv" --device cpu --overwrite > "$WORK/eval/eval_$1.txt"
  refsr -q evaluate --pred "$2" --gt "$3" --metrics psnr,ssim --color rgb -o "$WORK/eval/report_$1_rgb.json" \
      --csv "$WORK/eval/per_image_$1_rgb.csv" --device cpu --overwrite > "$WORK/eval/eval_$1_rgb.txt"
  echo "== $1"; sed -n 3,5p "$WORK/eval/eval_$1.txt"; sed -n 3,4p "$WORK/eval/eval_$1_rgb.txt"
}

bicubic() {  # NAME MANIFEST: bicubic upsampling into WORK/restored/NAME, scored
  python -c "import sys; from refsr.demo import bicubic_baseline as b; b(sys.argv[1], sys.argv[2])" "$2" "$WORK/restored/$1"
  evaluate "$1" "$WORK/restored/$1" "$2"
}
