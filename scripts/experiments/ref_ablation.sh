#!/usr/bin/env bash
# Issue 9: the paper's Table 1 at small scale. LDM vs LDM+CA on birds, same data, same
# config, same seed, same data order, same optimizer steps (and the same wall-clock cap).
#
#   scripts/experiments/ref_ablation.sh [BIRDS_DIR] [WORK_DIR]
#
# Every stage resumes, so the script can be rerun after an interruption; a stage whose
# outputs exist is skipped. Knobs (environment; defaults in brackets):
#   DEVICE [auto]  CONFIG [small]  SEED [0]  AE_STEPS [3000]  STEPS [6000]  BATCH [config]
#   MAX_MINUTES [0 = none: stop each diffusion training after this many minutes, same cap for
#   both]  AE_MAX_MINUTES [MAX_MINUTES: the same for the autoencoder]
#   WORKERS [4: data loader workers]  PARALLEL [1: train ldm and ldm-ca at the same time]
#   SAMPLE_STEPS [50]  TEST_PER_SPECIES [2]  MAX_REFS [config]  MATCHER [none]
#   CLIP_MODEL [scripts/experiments/clip_small_random.json]  CLIP_PRETRAINED [none]
#   INIT_FROM [none: a model folder (refsr or diffusers LDM-SR) that BOTH runs start from (its
#           unet/ and vqvae/; ldm-ca gets a fresh, zero-initialised branch, so both start from
#           the same function); the autoencoder stage is then skipped]
#   OUT_DIR [WORK_DIR]: where train/eval write runs/, restored/, reports and logs (the
#           inputs, pairs and matches, are always read from WORK_DIR): a second experiment on
#           the same pairs gets its own OUT_DIR
#   REFSR [refsr: how to call the CLI, e.g. "python3 -m refsr_cli"]
#   STAGES ["split degrade index match train eval"]: run some stages only, e.g. retrieval on
#           one machine and training on another (eval = sample, evaluate, table, picture).
#   RESULTS [docs/results]: where the small outputs (reports, logs, metrics) are copied.
#
# The first run reported in docs/results.md (one H100, 4.3 minutes in all) was:
#   DEVICE=cuda BATCH=64 WORKERS=12 AE_STEPS=800 AE_MAX_MINUTES=0.6 STEPS=1500 MAX_MINUTES=1.6 \
#       SAMPLE_STEPS=20 scripts/experiments/ref_ablation.sh ../shared/data/birds work/ref_ablation
# in which ldm-ca was cut at 710 steps by the time cap (ldm made 1500): not a fair comparison.
# A fair 10-minute H100 run: equal steps that ldm-ca reaches (~10 steps/s at batch 64 when both
# train at once), the cap only as a safety net:
#   DEVICE=cuda BATCH=64 WORKERS=12 AE_STEPS=2000 STEPS=2500 MAX_MINUTES=0 SAMPLE_STEPS=50 ...
# The fair run 2 of docs/results.md fine-tunes both from run 1's LDM+CA folder on 2 CPU cores:
#   OMP_NUM_THREADS=1 STAGES="train eval" INIT_FROM=work/ref_ablation/runs/ldm-ca/model DEVICE=cpu \
#     BATCH=16 WORKERS=0 STEPS=500 MAX_MINUTES=0 SAMPLE_STEPS=20 RESULTS=docs/results/finetune \
#     OUT_DIR=work/ref_ablation/finetune scripts/experiments/ref_ablation.sh ../shared/data/birds work/ref_ablation
set -euo pipefail
BIRDS=${1:-../shared/data/birds}; WORK=${2:-work/ref_ablation}
DEVICE=${DEVICE:-auto}; CONFIG=${CONFIG:-small}; SEED=${SEED:-0}
AE_STEPS=${AE_STEPS:-3000}; STEPS=${STEPS:-6000}; MAX_MINUTES=${MAX_MINUTES:-0}
WORKERS=${WORKERS:-4}; PARALLEL=${PARALLEL:-1}; SAMPLE_STEPS=${SAMPLE_STEPS:-50}
TEST_PER_SPECIES=${TEST_PER_SPECIES:-2}; MATCHER=${MATCHER:-none}
CLIP_MODEL=${CLIP_MODEL:-scripts/experiments/clip_small_random.json}; CLIP_PRETRAINED=${CLIP_PRETRAINED:-none}
OUT_DIR=${OUT_DIR:-$WORK}; REFSR=${REFSR:-refsr}; STAGES=${STAGES:-split degrade index match train eval}; RESULTS=${RESULTS:-docs/results}
PYTHON=${PYTHON:-python3}
BATCH_OPT=(); [ -n "${BATCH:-}" ] && BATCH_OPT=(--batch-size "$BATCH")
REFS_OPT=(); [ -n "${MAX_REFS:-}" ] && REFS_OPT=(--max-refs "$MAX_REFS")
mkdir -p "$WORK" "$OUT_DIR" "$RESULTS"
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

if has split; then
  stamp "split (by image, seed $SEED): $TEST_PER_SPECIES test and 1 validation photo per species"
  $PYTHON scripts/experiments/split_birds.py "$BIRDS" "$WORK/split" --val 1 --test "$TEST_PER_SPECIES" --seed "$SEED"
fi
if has degrade; then
  stamp "degrade: Real-ESRGAN x4, 224 px HR crops (the photos are 227 px)"
  $REFSR -q degrade $(cat "$WORK/split/test.txt") -o "$WORK/pairs_test" --crop 224 --seed "$SEED"
  $REFSR -q degrade $(cat "$WORK/split/train.txt") -o "$WORK/pairs_train" --crop 224 --seed "$SEED"
fi
if has index; then
  stamp "index-refs: the training photos are the reference collection"
  $REFSR -q index-refs $(cat "$WORK/split/train.txt") --index "$WORK/refs.index" \
      --clip-model "$CLIP_MODEL" --pretrained "$CLIP_PRETRAINED" --device "$DEVICE"
fi
if has match; then
  stamp "match: references = other photos of the same species (--group-by parent)"
  for split in train test; do
    query=hr; [ "$split" = test ] && query=lr       # training queries are HR crops, test queries the LR
    $REFSR -q match "$WORK/pairs_$split/manifest.jsonl" --index "$WORK/refs.index" \
        -o "$WORK/matches_$split.jsonl" --query "$query" --group-by parent --top-images 10 \
        --top-refs 10 --patch 224 --stride 224 --matcher "$MATCHER" --device "$DEVICE"
  done
fi

if has train; then
  common=(--config "$CONFIG" --seed "$SEED" --device "$DEVICE" --workers "$WORKERS" "${BATCH_OPT[@]}"
          --checkpoint-every 1000 --validate-every 0 --log-every 25)
  if [ -n "${INIT_FROM:-}" ]; then
    start=(--init-from "$INIT_FROM")
  else
    start=(--vqvae "$OUT_DIR/runs/vq/model")
    stamp "train the VQ autoencoder on the training HR crops"
    $REFSR train autoencoder "$WORK/pairs_train/manifest.jsonl" --steps "$AE_STEPS" \
      --no-lpips -o "$OUT_DIR/runs/vq" --resume --max-minutes "${AE_MAX_MINUTES:-$MAX_MINUTES}" "${common[@]}" \
      > "$OUT_DIR/train_vq.log" 2>&1
  fi
  stamp "train ldm and ldm-ca: same config, seed, data order, steps and time cap"
  for kind in ldm ldm-ca; do
    $REFSR train diffusion "$WORK/pairs_train/manifest.jsonl" --kind "$kind" \
        --matches "$WORK/matches_train.jsonl" "${start[@]}" --steps "$STEPS" \
        "${REFS_OPT[@]}" -o "$OUT_DIR/runs/$kind" --resume --max-minutes "$MAX_MINUTES" "${common[@]}" \
        > "$OUT_DIR/train_$kind.log" 2>&1 &
    [ "$PARALLEL" = 1 ] || wait
  done
  wait
fi

# The comparison is only fair if both runs made the same number of optimizer steps: a time
# cap that stops one run earlier (ldm-ca costs about 2x ldm per step) makes it invalid.
steps_done() { $PYTHON -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(max(x['step'] for x in r))" "$1"; }
check_fair() {
  local a b; a=$(steps_done "$OUT_DIR/runs/ldm/metrics.jsonl"); b=$(steps_done "$OUT_DIR/runs/ldm-ca/metrics.jsonl")
  if [ "$a" != "$b" ]; then
    echo "WARNING: unequal training: ldm made $a optimizer steps, ldm-ca $b; the comparison below is not fair." \
      "Rerun with STEPS at most what ldm-ca reaches within MAX_MINUTES." | tee "$OUT_DIR/fairness.txt"
  else
    echo "fair: both models made $a optimizer steps" | tee "$OUT_DIR/fairness.txt"
  fi
}

if has eval; then
  check_fair
  stamp "sample the test split: same sampler, steps and seed for both models"
  for kind in ldm ldm-ca; do
    $REFSR -q sample --model "$OUT_DIR/runs/$kind/model" "$WORK/pairs_test/manifest.jsonl" \
        --matches "$WORK/matches_test.jsonl" --steps "$SAMPLE_STEPS" --seed "$SEED" \
        --device "$DEVICE" -o "$OUT_DIR/restored/$kind" 2> "$OUT_DIR/sample_$kind.log" &
    [ "$PARALLEL" = 1 ] || wait
  done
  wait
  $PYTHON -c "from refsr.demo import bicubic_baseline as b; b('$WORK/pairs_test/manifest.jsonl', '$OUT_DIR/restored/bicubic')"
  stamp "evaluate"
  for name in bicubic ldm ldm-ca; do
    $REFSR -q evaluate --pred "$OUT_DIR/restored/$name" --gt "$WORK/pairs_test/manifest.jsonl" \
        -o "$OUT_DIR/report_$name.json" --csv "$OUT_DIR/per_image_$name.csv" --device "$DEVICE" \
        --protocol "refs: 10 fragments of other training photos of the same species (match --group-by parent)"
  done
  $REFSR evaluate --compare "$OUT_DIR/report_ldm.json" "$OUT_DIR/report_ldm-ca.json" "$OUT_DIR/report_bicubic.json" \
      --names "LDM,LDM+CA,Bicubic" | tee "$OUT_DIR/table.txt"
  cat "$OUT_DIR/fairness.txt" >> "$OUT_DIR/table.txt"
  $PYTHON scripts/experiments/ablation_grid.py "$WORK" "$RESULTS/grid.png" --outputs "$OUT_DIR"
  cp "$OUT_DIR"/report_*.json "$OUT_DIR"/table.txt "$OUT_DIR"/fairness.txt "$OUT_DIR"/train_*.log "$RESULTS"/ 2>/dev/null || true
  for kind in vq ldm ldm-ca; do
    [ -f "$OUT_DIR/runs/$kind/metrics.jsonl" ] && cp "$OUT_DIR/runs/$kind/metrics.jsonl" "$RESULTS/metrics_$kind.jsonl"
  done
  stamp "done: $RESULTS"
fi
