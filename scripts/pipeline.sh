#!/usr/bin/env bash
# The six refsr stages chained on a folder of HR photos and a folder of reference photos.
# Every stage reads the previous stage's files; rerunning resumes where it stopped.
# A template: copy it, change the variables, delete the stages you don't need.
#
#   usage: scripts/pipeline.sh HR_DIR REF_DIR WORK_DIR [CONFIG]
#   e.g.   scripts/pipeline.sh ../shared/data/general/CBSD68 ../shared/data/general/CSun_Hays80 work/ tiny
#
# Environment knobs (defaults in brackets): DEVICE [auto], SEED [0], CROP [128],
# CLIP_MODEL [ViT-B-32], CLIP_PRETRAINED [laion2b_s34b_b79k; "none" = random weights offline],
# MATCHER [shipped: the trained matcher; imagenet; "none" = random ResNet-34; or a folder from `refsr train matcher`],
# AE_LPIPS [1; 0 = train the autoencoder without the LPIPS loss],
# AE_STEPS [2000], DIFF_STEPS [20000], SAMPLE_STEPS [50], PATCH [512], STRIDE [256].
set -euo pipefail

HR_DIR=${1:?HR_DIR}; REF_DIR=${2:?REF_DIR}; WORK=${3:?WORK_DIR}; CONFIG=${4:-small}
DEVICE=${DEVICE:-auto}; SEED=${SEED:-0}; CROP=${CROP:-128}
CLIP_MODEL=${CLIP_MODEL:-ViT-B-32}; CLIP_PRETRAINED=${CLIP_PRETRAINED:-laion2b_s34b_b79k}
MATCHER=${MATCHER:-shipped}; PATCH=${PATCH:-512}; STRIDE=${STRIDE:-256}
AE_STEPS=${AE_STEPS:-2000}; DIFF_STEPS=${DIFF_STEPS:-20000}; SAMPLE_STEPS=${SAMPLE_STEPS:-50}
mkdir -p "$WORK"

# 1. HR/LR pairs (Real-ESRGAN second-order degradations), with manifest.jsonl
refsr degrade "$HR_DIR" -o "$WORK/pairs" --scale 4 --crop "$CROP" --seed "$SEED"

# 2. reference index (OpenCLIP embeddings in hnswlib; incremental: rerun after adding photos)
refsr index-refs "$REF_DIR" --index "$WORK/refs.index" --clip-model "$CLIP_MODEL" \
    --pretrained "$CLIP_PRETRAINED" --device "$DEVICE"

# 3. the 10 best reference fragments per pair (CLIP top images, then the patch matcher)
refsr match "$WORK/pairs/manifest.jsonl" --index "$WORK/refs.index" -o "$WORK/matches.jsonl" \
    --query hr --top-images 20 --top-refs 10 --window "$PATCH" --stride "$STRIDE" \
    --matcher "$MATCHER" --device "$DEVICE"      # the CLIP model is the one index.json records

# 4. train: the VQ autoencoder, then the denoiser with the reference branch
AE_OPTS=(); [ "${AE_LPIPS:-1}" = 0 ] && AE_OPTS=(--no-lpips)
refsr train autoencoder "$WORK/pairs/manifest.jsonl" --config "$CONFIG" \
    --steps "$AE_STEPS" --seed "$SEED" --device "$DEVICE" -o "$WORK/runs/vq" --resume "${AE_OPTS[@]}"
refsr train diffusion "$WORK/pairs/manifest.jsonl" --kind ldm-ca \
    --matches "$WORK/matches.jsonl" --vqvae "$WORK/runs/vq/model" --config "$CONFIG" \
    --steps "$DIFF_STEPS" --seed "$SEED" --device "$DEVICE" -o "$WORK/runs/ldm-ca" --resume

# 5. restore the LR images with their matched references
refsr sample --model "$WORK/runs/ldm-ca/model" "$WORK/pairs/manifest.jsonl" \
    --matches "$WORK/matches.jsonl" --steps "$SAMPLE_STEPS" --seed "$SEED" --device "$DEVICE" \
    -o "$WORK/restored"

# 6. metrics against the HR crops
refsr evaluate --pred "$WORK/restored" --gt "$WORK/pairs/manifest.jsonl" \
    -o "$WORK/report.json" --csv "$WORK/per_image.csv"
echo "report: $WORK/report.json"
