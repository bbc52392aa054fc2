#!/bin/bash
# Copy probe (docs/results.md, run 10): can the reference branch learn to copy from a reference that
# holds the target? A tiny U-Net (copy_probe.json) trained from scratch on 64 px patches of 80 px HR crops
# of the training photos, one reference per sample, the shipped VQ frozen; the validation birds cut the same way.
#   scripts/experiments/copy_probe.sh data              pairs, and matches files: noise (train), ground truth / another pair's (val)
#   ARM=self scripts/experiments/copy_probe.sh train    self: --self-ref-fraction 1 (a view of its own HR in the slot); noise: the noise image
#   ARM=self scripts/experiments/copy_probe.sh eval     val with the ground truth and with another pair's HR as the reference (paired)
# Knobs: WORK [work/copy] PACK [gpu_data] STEPS [2400] MINUTES [50] (one thread each: two arms side by side)
set -euo pipefail
WORK=${WORK:-work/copy}; PACK=${PACK:-gpu_data}; STEPS=${STEPS:-2400}; MINUTES=${MINUTES:-50}; ARM=${ARM:-self}
here=$(dirname "$0")
list() { sed "s|^|$PACK/split/|" "$PACK/split/$1.txt"; }
case "${1:?stage: data, train or eval}" in
  data)
    refsr -q degrade $(list train) -o "$WORK/pairs80" --crop 80 --crops-per-image 2 --seed 0
    refsr -q degrade $(list val) -o "$WORK/val80" --crop 80 --seed 1
    python "$here/oracle_matches.py" "$WORK/pairs80/manifest.jsonl" "$WORK/matches_noise.jsonl" --noise
    python "$here/oracle_matches.py" "$WORK/val80/manifest.jsonl" "$WORK/val_oracle.jsonl"
    python "$here/oracle_matches.py" "$WORK/val80/manifest.jsonl" "$WORK/val_other.jsonl" --other ;;
  train)
    self=0; [ "$ARM" = self ] && self=1
    OMP_NUM_THREADS=1 refsr train diffusion "$WORK/pairs80/manifest.jsonl" --matches "$WORK/matches_noise.jsonl" \
        --vqvae refsr/weights/default --config "$here/copy_probe.json" --kind ldm-ca --self-ref-fraction $self \
        --ref-dropout 0 --min-snr-gamma 5 --lr 5e-4 --lr-schedule cosine --warmup 50 --steps "$STEPS" \
        --max-minutes "$MINUTES" --checkpoint-every 200 --validate-every 0 --log-every 25 --device cpu --seed 0 \
        -o "$WORK/run_$ARM" ;;
  eval)
    mkdir -p "$WORK/eval"
    for m in oracle other; do
      out=$WORK/restored/${ARM}_$m
      refsr -q sample --model "$WORK/run_$ARM/model" "$WORK/val80/manifest.jsonl" --matches "$WORK/val_$m.jsonl" \
          --steps 20 --seed 0 --device cpu -o "$out"
      refsr -q evaluate --pred "$out" --gt "$WORK/val80/manifest.jsonl" --metrics psnr,ssim -o "$WORK/eval/report_${ARM}_$m.json" \
          --csv "$WORK/eval/per_image_${ARM}_$m.csv" --device cpu --overwrite > /dev/null
    done
    python "$here/paired.py" "$WORK/eval/per_image_${ARM}_other.csv" "$WORK/eval/per_image_${ARM}_oracle.csv" ;;
  *) echo "unknown stage $1 (data, train or eval)" >&2; exit 2 ;;
esac
