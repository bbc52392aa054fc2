#!/usr/bin/env bash
# Branch copy probe (docs/results.md, run 15): does the shipped model's reference branch learn to
# borrow from a reference's content, given enough samples that hold the target? The branch alone
# (--freeze-unet: the model without references stays the shipped one), every decoder position
# (--ca-levels all: the two full-resolution positions run 7's branch lacked start as matching; the
# shipped branch has them since run 16), one reference per sample, always a view of the sample's own HR
# (--self-ref-fraction 1 --max-refs 1; run 16: SELF_REF=0.5, half of them a matched photo instead).
# Data: the pairs and matches of `scripts/train_default_model.sh pairs retrieval` (DATA_WORK).
#   scripts/experiments/branch_copy_probe.sh train   RUN from INIT (run 15: 5,000 steps at lr 5e-4, 64 min
#                                                    on 2 cores; then INIT=that model LR=2.5e-4 STEPS=3000)
#   scripts/experiments/branch_copy_probe.sh eval    the validation birds with MODELS, each with its matched
#                                                    references, the ground truth (oracle) and another
#                                                    pair's HR (other) as the reference, sampled as shipped
# Knobs: DATA_WORK [work/default_model] WORK [work/ft15] INIT [refsr/weights/default] RUN [WORK/probe]
#   LR [5e-4] STEPS [5000] MINUTES [68] TRAIN_SEED [5] SELF_REF [1] MAX_REFS [1] (SELF_REF 0.5: half of the samples
#   keep a matched reference, another photo, instead of the view) MODELS ["refsr/weights/default RUN/model"]
set -euo pipefail
DATA_WORK=${DATA_WORK:-work/default_model}; WORK=${WORK:-work/ft15}; INIT=${INIT:-refsr/weights/default}
RUN=${RUN:-$WORK/probe}; LR=${LR:-5e-4}; STEPS=${STEPS:-5000}; MINUTES=${MINUTES:-68}; TRAIN_SEED=${TRAIN_SEED:-5}
SELF_REF=${SELF_REF:-1}; MAX_REFS=${MAX_REFS:-1}
MODELS=${MODELS:-refsr/weights/default $RUN/model}
here=$(dirname "$0")
case "${1:?stage: train or eval}" in
  train)  # scripts/experiments/finetune_cpu.sh's train stage, with the probe's settings
    STAGES=train WORK=$DATA_WORK TRAIN_MATCHES=$DATA_WORK/matches_train.jsonl MODEL=$INIT RUN=$RUN FREEZE_UNET=1 \
        CA_LEVELS=all SELF_REF=$SELF_REF MAX_REFS=$MAX_REFS LR_START=0.5 LR=$LR LR_SCHEDULE=cosine STEPS=$STEPS MINUTES=$MINUTES \
        TRAIN_SEED=$TRAIN_SEED OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$here/finetune_cpu.sh" ;;
  eval)
    V=$DATA_WORK/pairs_val/manifest.jsonl; mkdir -p "$WORK/eval"
    [ -s "$WORK/matches_val_oracle.jsonl" ] || python "$here/oracle_matches.py" "$V" "$WORK/matches_val_oracle.jsonl"
    [ -s "$WORK/matches_val_other.jsonl" ] || python "$here/oracle_matches.py" "$V" "$WORK/matches_val_other.jsonl" --other
    for model in $MODELS; do
      name=$(basename "$(dirname "$model")"); [ "$model" = refsr/weights/default ] && name=shipped
      for r in matched oracle other; do
        m=$DATA_WORK/matches_val.jsonl; [ $r = matched ] || m=$WORK/matches_val_$r.jsonl
        out=$WORK/restored/${name}_$r
        refsr -q sample --model "$model" "$V" --matches "$m" --steps 4 --start-strength 0.5 --draws 4 --mirror \
            --color-fix luma --color-fix-levels 4 --seed 0 --device cpu -o "$out"
        refsr -q evaluate --pred "$out" --gt "$V" --metrics psnr,ssim -o "$WORK/eval/report_${name}_$r.json" \
            --csv "$WORK/eval/per_image_${name}_$r.csv" --device cpu --overwrite > /dev/null
      done
      echo "$name: the ground truth against another pair's HR as the reference"
      python "$here/paired.py" "$WORK/eval/per_image_${name}_other.csv" "$WORK/eval/per_image_${name}_oracle.csv"
    done ;;
  *) echo "unknown stage $1 (train or eval)" >&2; exit 2 ;;
esac
