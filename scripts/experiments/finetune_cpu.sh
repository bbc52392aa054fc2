#!/usr/bin/env bash
# Fine-tune the shipped ldm-ca denoiser on the CPU (docs/results.md, run 4): the sessions that
# had no GPU improve the default model where sampling happens (start strength < 1).
#
#   scripts/experiments/finetune_cpu.sh STAGE...     (or STAGES="..." in the environment)
#
# Stages (each resumes or skips what is done):
#   data    Real-ESRGAN x4 pairs (224 px crops) of the packed training and validation photos
#           (PACK from `scripts/train_default_model.sh pack`; runs 3-14 used its 20 MiB pack of
#           1,357 training photos: `GPU_DEPS=0 BUDGET_MB=20 scripts/train_default_model.sh pack`;
#           its default since 2026-12-07 leaves room for packages, 1,002), an index of the training photos
#           (random-weight OpenCLIP, offline) and the references of every pair (shipped matcher,
#           same folder = same species): matches_train.jsonl found from the HR crops (runs 4-5),
#           matches_train_lr.jsonl from the LR, as sampling finds them (runs 7 and 14). About 25
#           minutes on 2 cores.
#   testdata the test birds of run 3: Real-ESRGAN x4 pairs (224 px, seed 0) of the 140 packed test
#           birds, TEST = every other pair (70, one per species), and their references (LR queries).
#   train   `refsr train diffusion --init-from MODEL --max-strength MAX_STRENGTH` for MINUTES
#           (wall-clock cap) with min-SNR 5, epsilon prediction (the shipped model's).
#   val     the validation birds at start strengths VAL_STRENGTHS and steps VAL_STEPS (wavelet colour
#           fix): chooses the recommended settings on photos that are neither training nor test.
#   test    the test birds (TEST manifest, 70 images, one per species) with and without references,
#           for TEST_MODELS (base, ft) and colour fixes TEST_FIXES, at START_STRENGTH and SAMPLE_STEPS;
#           PSNR/SSIM/NIQE in WORK/eval.
#   bicubic the floor: bicubic upsampling of the validation and the test birds.
# Run 4 (docs/results.md): MINUTES=80, then the train stage again with MINUTES=20 (it resumes).
# Run 5: MODEL = run 4's model (the shipped one), LR_SCHEDULE=cosine STEPS=2600 MINUTES=75 TRAIN_SEED=1.
# Run 7: MODEL = run 5's model, LR_START=0.5 TRAIN_MATCHES=$WORK/matches_train_lr.jsonl (LR queries, as
#   sampling matches) LR_SCHEDULE=cosine STEPS=2300 MINUTES=68 TRAIN_SEED=2.
# Run 14: MODEL = run 7's model (the shipped one), LR_START=0.5 TRAIN_MATCHES=$WORK/matches_train_lr.jsonl
#   LR_SCHEDULE=cosine STEPS=700 MINUTES=50 TRAIN_SEED=3, with PIXEL_LOSS=1 and, the control, without.
# Knobs: PACK [gpu_data] WORK [work/ft] MODEL [refsr/weights/default] MINUTES [75]
#   MAX_STRENGTH [0.5] LR [1e-4] LR_SCHEDULE [constant: run 4; cosine: run 5, decays to 0 at STEPS] BATCH [8] STEPS [100000] EMA [0.995] SEED [0]
#   TRAIN_SEED [SEED: the training draws; a continued fine-tune takes a new one]
#   FREEZE_UNET [0; 1: --freeze-unet, train the reference branch only]
#   CA_LEVELS [the model's: --ca-levels, e.g. 0,1,2,3 adds full-resolution positions to its branch]
#   SELF_REF [0: --self-ref-fraction, the fraction of samples given a view of their own HR as a reference]
#   MAX_REFS [the config's: --max-refs, references per training sample]
#   LR_START [0: --lr-start-fraction] PIXEL_LOSS [0: --pixel-loss-weight] TRAIN_MATCHES [WORK/matches_train.jsonl] DRAWS [the model's: --draws of val/test]
#   RUN [WORK/runs/ldm-ca-ft: the training run, and the ft model of val/test]
#   VAL_STRENGTHS ["0.2 0.3 0.5"] VAL_STEPS [SAMPLE_STEPS] VAL_MODELS ["base ft"]
#   TEST_MODELS [ft] TEST_FIXES ["wavelet none"] START_STRENGTH [0.3] SAMPLE_STEPS [20]
#   FIX_LEVELS [5: the wavelet levels of the colour fixes, as runs 3-12 sampled (run 13 chose 4 for the shipped model)]
#   TEST [work/eval/pairs_test/manifest70.jsonl] TEST_MATCHES [work/eval/matches_test.jsonl]
set -euo pipefail
STAGES=${STAGES:-${*:-data testdata train val test bicubic}}
PACK=${PACK:-gpu_data}; WORK=${WORK:-work/ft}; MODEL=${MODEL:-refsr/weights/default}
MINUTES=${MINUTES:-75}; LR_SCHEDULE=${LR_SCHEDULE:-constant}; MAX_STRENGTH=${MAX_STRENGTH:-0.5}; LR=${LR:-1e-4}; BATCH=${BATCH:-8}; STEPS=${STEPS:-100000}
EMA=${EMA:-0.995}; SEED=${SEED:-0}; TRAIN_SEED=${TRAIN_SEED:-$SEED}; VAL_STRENGTHS=${VAL_STRENGTHS:-0.2 0.3 0.5}; START_STRENGTH=${START_STRENGTH:-0.3}
SAMPLE_STEPS=${SAMPLE_STEPS:-20}; VAL_STEPS=${VAL_STEPS:-$SAMPLE_STEPS}; VAL_MODELS=${VAL_MODELS:-base ft}
TEST_MODELS=${TEST_MODELS:-ft}; TEST_FIXES=${TEST_FIXES:-wavelet none}; FIX_LEVELS=${FIX_LEVELS:-5}
TEST=${TEST:-work/eval/pairs_test/manifest70.jsonl}; TEST_MATCHES=${TEST_MATCHES:-work/eval/matches_test.jsonl}
FREEZE_UNET=${FREEZE_UNET:-0}; branch=(); [ "$FREEZE_UNET" = 1 ] && branch=(--freeze-unet)
CA_LEVELS=${CA_LEVELS:-}; [ -n "$CA_LEVELS" ] && branch+=(--ca-levels "$CA_LEVELS")
SELF_REF=${SELF_REF:-0}; [ "$SELF_REF" != 0 ] && branch+=(--self-ref-fraction "$SELF_REF")
MAX_REFS=${MAX_REFS:-}; [ -n "$MAX_REFS" ] && branch+=(--max-refs "$MAX_REFS")
LR_START=${LR_START:-0}; PIXEL_LOSS=${PIXEL_LOSS:-0}; TRAIN_MATCHES=${TRAIN_MATCHES:-$WORK/matches_train.jsonl}; DRAWS=${DRAWS:-}
draws=(); [ -n "$DRAWS" ] && draws=(--draws "$DRAWS")
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
list() { sed "s|^|$PACK/split/|" "$PACK/split/$1.txt"; }
mkdir -p "$WORK/eval"
RUN=${RUN:-$WORK/runs/ldm-ca-ft}

if has data; then
  stamp "data: pairs, index, matches"
  for split in train val; do
    refsr -q degrade $(list $split) -o "$WORK/pairs_$split" --crop 224 --seed "$SEED"
  done
  refsr -q index-refs $(list train) --index "$WORK/refs.index" \
      --clip-model scripts/experiments/clip_small_random.json --pretrained none --device cpu
  for out in train:hr train_lr:lr val:lr; do  # NAME:QUERY (the HR crops or the LR images)
    name=${out%:*}; split=${name%_lr}
    [ -s "$WORK/matches_$name.jsonl" ] && continue
    refsr -q match "$WORK/pairs_$split/manifest.jsonl" --index "$WORK/refs.index" -o "$WORK/matches_$name.jsonl" \
        --query "${out#*:}" --group-by parent --top-images 10 --top-refs 10 --window 224 --stride 112 \
        --matcher shipped --device cpu
  done
fi

if has testdata; then
  stamp "testdata: the test birds, every other pair, their references"
  refsr -q degrade $(list test) -o "$(dirname "$TEST")" --crop 224 --seed "$SEED"
  [ -s "$TEST" ] || sed -n 'p;n' "$(dirname "$TEST")/manifest.jsonl" > "$TEST"
  [ -s "$TEST_MATCHES" ] || refsr -q match "$TEST" --index "$WORK/refs.index" -o "$TEST_MATCHES" \
      --query lr --group-by parent --top-images 10 --top-refs 10 --window 224 --stride 112 \
      --matcher shipped --device cpu
fi

if has train; then
  stamp "train: from $MODEL, timesteps below $MAX_STRENGTH x T, $MINUTES min"
  refsr train diffusion "$WORK/pairs_train/manifest.jsonl" --matches "$TRAIN_MATCHES" \
      --init-from "$MODEL" --kind ldm-ca --config small --max-strength "$MAX_STRENGTH" --min-snr-gamma 5 \
      --lr-start-fraction "$LR_START" --pixel-loss-weight "$PIXEL_LOSS" "${branch[@]}" \
      --lr "$LR" --warmup 50 --lr-schedule "$LR_SCHEDULE" --ema-decay "$EMA" --batch-size "$BATCH" --steps "$STEPS" \
      --max-minutes "$MINUTES" --validate-every 0 --checkpoint-every 200 --log-every 25 --seed "$TRAIN_SEED" \
      --device cpu --resume -o "$RUN" 2>&1 | tee "$WORK/train_$(basename "$RUN").log" | tail -n 3
fi

evaluate() {  # NAME PRED MANIFEST
  refsr -q evaluate --pred "$2" --gt "$3" --metrics psnr,ssim,niqe -o "$WORK/eval/report_$1.json" \
      --csv "$WORK/eval/per_image_$1.csv" --device cpu --overwrite > "$WORK/eval/eval_$1.txt"
  head -n 5 "$WORK/eval/eval_$1.txt"   # (not `| head`: under pipefail a closed pipe could end the script)
}
if has val; then  # every start strength x steps x model (base = MODEL, ft = this run's); names end _nN unless SAMPLE_STEPS
  for s in $VAL_STRENGTHS; do
    for n in $VAL_STEPS; do
      for name in $VAL_MODELS; do
        model=$MODEL; [ $name = ft ] && model=$RUN/model
        out=val_${name}_s$s; [ "$n" = "$SAMPLE_STEPS" ] || out=${out}_n$n
        refsr -q sample --steps "$n" --seed "$SEED" --color-fix wavelet --color-fix-levels "$FIX_LEVELS" --device cpu --model "$model" \
            "$WORK/pairs_val/manifest.jsonl" --matches "$WORK/matches_val.jsonl" --start-strength "$s" "${draws[@]}" \
            -o "$WORK/restored/$out"
        stamp "val $name start $s, $n steps"; evaluate "$out" "$WORK/restored/$out" "$WORK/pairs_val/manifest.jsonl"
      done
    done
  done
fi

if has test; then  # TEST_MODELS x TEST_FIXES x with/without references, at START_STRENGTH and SAMPLE_STEPS
  for name in $TEST_MODELS; do
    model=$MODEL; [ $name = ft ] && model=$RUN/model
    for fix in $TEST_FIXES; do
      for refs in refs norefs; do
        out=test_${name}_s${START_STRENGTH}_n${SAMPLE_STEPS}_$fix; with=(--matches "$TEST_MATCHES")
        [ $refs = norefs ] && { out=${out}_norefs; with=(); }
        [ "$fix" = wavelet ] || [ "$fix" = luma ] && with+=(--color-fix-levels "$FIX_LEVELS")
        refsr -q sample --steps "$SAMPLE_STEPS" --seed "$SEED" --color-fix "$fix" --device cpu --model "$model" \
            "$TEST" "${with[@]}" --start-strength "$START_STRENGTH" "${draws[@]}" -o "$WORK/restored/$out"
        stamp "$out"; evaluate "$out" "$WORK/restored/$out" "$TEST"
      done
    done
  done
fi

if has bicubic; then  # the floor, for the validation and the test birds
  for split in val test; do
    manifest=$WORK/pairs_val/manifest.jsonl; [ $split = test ] && manifest=$TEST
    python -c "import sys; from refsr.demo import bicubic_baseline as b; b(sys.argv[1], sys.argv[2])" \
        "$manifest" "$WORK/restored/${split}_bicubic"
    stamp "${split}_bicubic"; evaluate "${split}_bicubic" "$WORK/restored/${split}_bicubic" "$manifest"
  done
fi
