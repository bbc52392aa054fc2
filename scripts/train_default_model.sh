#!/usr/bin/env bash
# Train, evaluate and export the shipped default model (issue 13), sized for the GPU slot we
# can get: one H100/H200 with 16 CPU cores, at most ~9 minutes per command, a working-tree copy
# of at most 64 MiB, result files of at most 16 MiB each.
#
#   scripts/train_default_model.sh STAGE...        (or STAGES="..." in the environment)
#
# Stages (run in this order; each resumes or skips what is done, so a command cut by its time
# limit is continued by running it again):
#   pack        (here, CPU) into PACK (default gpu_data/, git-ignored): PACK/deps, the Python packages
#               the GPU machine's image lacks (diffusers, open_clip_torch and its ftfy/wcwidth, lpips,
#               piq: the versions installed here, as wheels for its Python GPU_PYTHON, unpacked into one
#               site.tar.xz; hnswlib, which publishes no Linux wheel, as source and as a wheel built here
#               by a Python GPU_PYTHON where there is one: WHEEL_PYTHON), then the photos of
#               ../shared/data (every test/validation bird, the general photos, as many training birds
#               per species as fit in what the 64 MiB working-tree copy leaves: BUDGET_MB auto). It
#               refuses if tracked files + PACK would exceed 64 MiB. Carry PACK to the GPU machine.
#   (every stage below first makes sure refsr and its dependencies import: where they do not, as on
#   the GPU machine, it unpacks PACK/deps into WORK/site, installs hnswlib there once (the packed wheel
#   where it loads, else built from its source: pip, no network), and runs `python -m refsr_cli` from
#   this checkout)
#   pairs       Real-ESRGAN x4 pairs, CROP px crops: training (birds + general), validation birds, test birds,
#               test general
#   retrieval   index the training photos (OpenCLIP; random weights offline), match every pair
#               with its LR as the query, as `refsr sample` is given them (shipped patch matcher,
#               references = other photos of the same folder/species)
#   autoencoder the VQ autoencoder on the training crops, 5 % of them held out: RUN/eval.json.
#               From INIT_FROM (the default): its decoder only, so the latents (and the
#               denoiser trained on them) stay; from scratch (INIT_FROM=none): all of it, latent
#               scale and decoding measured at export
#   diffusion   ldm and ldm-ca side by side: same config, seed, data order and optimizer steps;
#               from INIT_FROM: ldm-ca from its U-Net and branch, ldm from the same U-Net alone
#   handback    the trained models (float16), their logs and the matches files into RESULTS as
#               trained.tar.part00, ... (at most PART_MB each: the device returns at most 8 files of 16 MiB),
#               so that they come home even if the eval command cannot run
#   unpack      (here) RESULTS/trained.tar.part* -> WORK (runs/, logs, matches_*.jsonl): then `eval export
#               install` run here on the CPU (with the pairs stage first, from the same PACK; the matches came back)
#   eval        the colour fix's wavelet levels for ldm-ca (START_COLOR_FIX_LEVELS auto: the best Y-PSNR
#               on the validation birds); test birds: bicubic, autoencoder ceiling, INIT_FROM as it is
#               shipped (its own recommended sampling), ldm, ldm-ca without / with references, ldm-ca
#               sampled as shipped (--start-strength, draws, START_COLOR_FIX and its levels), and so
#               with each pair's own HR (oracle) or another pair's HR as its reference (does the
#               branch borrow content? scripts/experiments/oracle_matches.py; another photo, not
#               noise: a model trained with views of its target never saw noise as a reference,
#               docs/results.md run 10); test general photos: bicubic, ldm-ca; PSNR/SSIM (Y,
#               border 4) and NIQE; tables and a picture
#   export      the ldm-ca model as float16, with the sampling the eval used as its recommended
#               one (scripts/experiments/recommend.py), into RESULTS (default $OUT, else
#               WORK/results) as default_model.tar.part00, ... and the reports as reports.tar.gz
#   install     (here) RESULTS/default_model.tar.part* -> refsr/weights/default, RESULTS/reports.tar.gz
#               -> docs/results/default_model
#
# The GPU run (two commands, the second right after the first so the machine stays warm; SLOT is
# the seconds a command may take: the autoencoder and diffusion caps shrink to fit it, the
# diffusion first):
#   run: SLOT=510 STAGES="pairs retrieval autoencoder diffusion handback" scripts/train_default_model.sh
#        (carry gpu_data, timeout 540)
#   run: STAGES="eval export" scripts/train_default_model.sh   (what device time is left)
#   here: RESULTS=<fetched> scripts/train_default_model.sh install
# If the second command cannot run: OMP_NUM_THREADS=1 RESULTS=<the first's files> STAGES="unpack pairs
# eval export" scripts/train_default_model.sh here (18 minutes on the idle 2-core VM, 2026-12-08, at full
# size: no retrieval, since the matches come back; the eval's samplers run side by side), then install.
# Why from the shipped model by default: in the 4-6 minutes of training one command allows, a
# from-scratch run reaches ~1,500 steps of ldm-ca (run 1 measured ~7.4 steps/s beside ldm on an
# H100): less than went into the shipped model (docs/results.md runs 1-7), so it would not
# replace it; fine-tuned from it at batch 64, both denoisers see up to 83,200 samples (all its CPU
# fine-tuning, runs 4-7, saw 67,700; a CPU hour sees 18,000), with run 7's recipe (timesteps below MAX_STRENGTH x T, half of each batch
# trained as sampling starts).
# Knobs (environment; defaults in brackets): PACK [gpu_data] WORK [work/default_model]
#   INIT_FROM [refsr/weights/default; none = from scratch] DEVICE [auto] CONFIG [small] SEED [0]
#   CROP [224] BATCH [64] WORKERS [12] AE_STEPS [4000] AE_MAX_MINUTES [2]
#   STEPS [1300: ldm-ca reaches it beside ldm in ~3 minutes at run 1's 7.4 steps/s, inside MAX_MINUTES; the eval checks the counts;
#   run 1 had positions 0,1: the two full-resolution ones of CA_LEVELS all cost more, not measured on a GPU]
#   MAX_MINUTES [4] LR [1e-4 from INIT_FROM, else the config's] PREDICTION [INIT_FROM's; v_prediction
#   from scratch] MIN_SNR [5] MAX_STRENGTH [0.5 from INIT_FROM, else 1] LR_START [0.5: --lr-start-fraction]
#   PIXEL_LOSS [0: --pixel-loss-weight of both denoisers; run 14 measured +0.02-0.03 dB for 1 on the CPU, for +0.1 NIQE]
#   SELF_REF [0.5: --self-ref-fraction of ldm-ca; run 9: the branch borrows no content without it; run 15: with it the
#   shipped branch does, more with more samples (the ground truth over another photo +0.12 dB after 40,000 samples, +0.20 after 64,000)] CA_LEVELS [all: every decoder position (--ca-levels all of ldm-ca); positions
#   the branch of INIT_FROM lacks are added and start as matching, which learns to copy where a random
#   start barely does (docs/results.md run 10); "model": INIT_FROM's or the config's own; or a list I,J,...]
#   AE_HOLDOUT [0.05] DECODE [continuous: the decoder learns the encoder's continuous latents; on the
#   shipped VQ, 250 decoder-only steps took held-out PSNR from 17.9 (quantised) to 23.6 dB] SAMPLE_STEPS [20] START_STRENGTH [0.5]
#   START_STEPS [4: with START_STRENGTH 0.5 one DDIM jump from t = 250, the best PSNR on the validation birds in run 5]
#   START_DRAWS [4: the mean of 4 draws of the noise, the shipped model's choice on the validation birds in run 6]
#   START_MIRROR [1: every second draw restores the mirror image (--mirror; run 11: +0.06 dB on the validation birds); 0: --no-mirror]
#   START_COLOR_FIX [luma: the wavelet fix and the input's chroma (run 12: Y unchanged, +0.19 dB RGB PSNR on the validation birds)]
#   START_COLOR_FIX_LEVELS [auto: the fix's wavelet levels, chosen for the new model on the validation birds among
#   2-7 (scripts/experiments/levels_probe.py; run 13: 4 for the shipped model, +0.11 dB Y-PSNR over StableSR's 5); or a number]
#   METRICS [psnr,ssim,niqe]
#   CLIP_MODEL [scripts/experiments/clip_small_random.json] CLIP_PRETRAINED [none]
#   MATCHER [shipped] BUDGET_MB [auto: what 64 MiB leaves beside the tracked files and PACK/deps, less 1.5]
#   DATA [../shared/data] REFSR [refsr where installed, else PYTHON -m refsr_cli] PYTHON [python3]
#   GPU_DEPS [1; 0: pack the photos only] GPU_PYTHON [3.12: the GPU image's] WHEEL_PYTHON [python$GPU_PYTHON, else pyenv's $GPU_PYTHON.*] SLOT [0: no limit; seconds this command may take] PART_MB [15]
set -euo pipefail
STAGES=${STAGES:-${*:-pack}}
PACK=${PACK:-gpu_data}; WORK=${WORK:-work/default_model}; DATA=${DATA:-../shared/data}
RESULTS=${RESULTS:-${OUT:-$WORK/results}}; INIT_FROM=${INIT_FROM:-refsr/weights/default}
DEVICE=${DEVICE:-auto}; CONFIG=${CONFIG:-small}; SEED=${SEED:-0}; BATCH=${BATCH:-64}; WORKERS=${WORKERS:-12}; CROP=${CROP:-224}
AE_STEPS=${AE_STEPS:-4000}; AE_MAX_MINUTES=${AE_MAX_MINUTES:-2}; AE_HOLDOUT=${AE_HOLDOUT:-0.05}; DECODE=${DECODE:-continuous}
STEPS=${STEPS:-1300}; MAX_MINUTES=${MAX_MINUTES:-4}; MIN_SNR=${MIN_SNR:-5}; LR_START=${LR_START:-0.5}; SELF_REF=${SELF_REF:-0.5}; PIXEL_LOSS=${PIXEL_LOSS:-0}
CA_LEVELS=${CA_LEVELS:-all}
if [ "$INIT_FROM" = none ]; then
  start=(); ae_start=(); PREDICTION=${PREDICTION:-v_prediction}; MAX_STRENGTH=${MAX_STRENGTH:-1}; LR=${LR:-}
else
  start=(--init-from "$INIT_FROM"); ae_start=(--init-from "$INIT_FROM" --decoder-only)
  PREDICTION=${PREDICTION:-}; MAX_STRENGTH=${MAX_STRENGTH:-0.5}; LR=${LR:-1e-4}
fi
recipe=(--min-snr-gamma "$MIN_SNR" --max-strength "$MAX_STRENGTH" --lr-start-fraction "$LR_START" --pixel-loss-weight "$PIXEL_LOSS")
[ -n "$PREDICTION" ] && recipe+=(--prediction-type "$PREDICTION")
[ -n "$LR" ] && recipe+=(--lr "$LR" --lr-schedule cosine --warmup 100)
SAMPLE_STEPS=${SAMPLE_STEPS:-20}; START_STRENGTH=${START_STRENGTH:-0.5}; START_STEPS=${START_STEPS:-4}; START_DRAWS=${START_DRAWS:-4}; START_MIRROR=${START_MIRROR:-1}; mirror=--mirror; [ "$START_MIRROR" = 0 ] && mirror=--no-mirror; START_COLOR_FIX=${START_COLOR_FIX:-luma}; START_COLOR_FIX_LEVELS=${START_COLOR_FIX_LEVELS:-auto}; METRICS=${METRICS:-psnr,ssim,niqe}
CLIP_MODEL=${CLIP_MODEL:-scripts/experiments/clip_small_random.json}; CLIP_PRETRAINED=${CLIP_PRETRAINED:-none}
MATCHER=${MATCHER:-shipped}; BUDGET_MB=${BUDGET_MB:-auto}; PYTHON=${PYTHON:-python3}
GPU_DEPS=${GPU_DEPS:-1}; GPU_PYTHON=${GPU_PYTHON:-3.12}; WHEEL_PYTHON=${WHEEL_PYTHON:-}; SLOT=${SLOT:-0}; PART_MB=${PART_MB:-15}
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
list() { sed "s|^|$PACK/split/|" "$PACK/split/$1.txt"; }   # a split's photos (listed relative to the list)
mib() { $PYTHON -c "import os, sys; print(round(sum(os.path.getsize(f) for f in sys.stdin.read().split(chr(0)) if os.path.isfile(f)) / 2**20, 2))"; }
travels_mib() {  # MiB of what the GPU machine's copy of the working tree holds besides PACK (tracked + untracked-not-ignored)
  git ls-files -z --cached --others --exclude-standard | mib; }
fit_minutes() {  # CAP RESERVE_S: CAP minutes (0: none), or fewer (at least 0.5) so that RESERVE_S seconds of the SLOT remain
  if [ "$SLOT" -le 0 ]; then echo "$1"; return; fi
  awk -v cap="$1" -v left=$((SLOT - SECONDS)) -v reserve="$2" 'BEGIN {
    m = (left - reserve) / 60; if (cap > 0 && cap < m) m = cap; if (m < 0.5) m = 0.5; printf "%.2f\n", m }'
}
parts() {  # NAME DIR: DIR as RESULTS/NAME.tar.part00, part01, ... of at most PART_MB MiB (the device returns 8 files of 16 MiB)
  mkdir -p "$RESULTS"; rm -f "$RESULTS/$1".tar.part*
  tar cf - -C "$2" . | split -b "${PART_MB}M" -d - "$RESULTS/$1.tar.part"
  ls "$RESULTS/$1".tar.part* | sed 's/^/  /'
}
unparts() {  # NAME DIR: RESULTS/NAME.tar.part* unpacked into DIR
  ls "$RESULTS/$1".tar.part* > /dev/null || { echo "$RESULTS/$1.tar.part*: not found" >&2; exit 1; }
  mkdir -p "$2"; cat "$RESULTS/$1".tar.part* | tar xf - -C "$2"
}
mkdir -p "$WORK"

if has pack; then
  [ -e "$PACK" ] && { echo "$PACK exists: remove it (or choose PACK) to pack again" >&2; exit 1; }
  deps="$WORK/deps.partial"; rm -rf "$deps"; mkdir -p "$deps"
  if [ "$GPU_DEPS" = 1 ]; then
    stamp "deps: what the GPU image lacks, as installed here, for its Python $GPU_PYTHON -> $PACK/deps"
    pinned() { $PYTHON -c "import sys; from importlib.metadata import version; print(f'{sys.argv[1]}=={version(sys.argv[1])}')" "$1"; }
    mkdir -p "$deps/whl" "$deps/site"
    for pkg in diffusers open_clip_torch ftfy wcwidth lpips piq; do  # its other needs (torch, accelerate, opencv, ...) are there
      $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
          -d "$deps/whl" "$(pinned $pkg)"
    done
    for w in "$deps"/whl/*.whl; do $PYTHON -m zipfile -e "$w" "$deps/site"; done   # a wheel is its site-packages files
    tar cJf "$deps/site.tar.xz" -C "$deps/site" . && rm -rf "$deps/whl" "$deps/site"
    $PYTHON -m pip download -q --no-deps --no-binary hnswlib -d "$deps" "$(pinned hnswlib)"   # no Linux wheel on PyPI
    # and a wheel of it for Python $GPU_PYTHON, so the GPU machine needs no compiler and no build time
    if [ -z "$WHEEL_PYTHON" ]; then
      for py in "python$GPU_PYTHON" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$GPU_PYTHON".*/bin/python; do
        "$py" -c "" 2> /dev/null && { WHEEL_PYTHON=$py; break; }
      done
    fi
    if [ -n "$WHEEL_PYTHON" ]; then
      HNSWLIB_NO_NATIVE=1 LDFLAGS=-s "$WHEEL_PYTHON" -m pip wheel -q --no-deps -w "$deps" "$deps"/hnswlib-*.tar.gz   # portable (no -march=native), stripped: 0.2 MiB
    else
      stamp "no Python $GPU_PYTHON here (WHEEL_PYTHON): the GPU machine builds hnswlib from its source (about 30 s of its time)"
    fi
  fi
  deps_mib=$(find "$deps" -type f -print0 | mib); tree_mib=$(travels_mib)
  [ "$BUDGET_MB" = auto ] && BUDGET_MB=$($PYTHON -c "import sys; print(round(64 - float(sys.argv[1]) - float(sys.argv[2]) - 1.5, 1))" "$tree_mib" "$deps_mib")
  stamp "pack $DATA -> $PACK: photos <= $BUDGET_MB MiB (the tree $tree_mib MiB, deps $deps_mib MiB)"
  $PYTHON scripts/experiments/pack_photos.py "$DATA" "$PACK" --budget-mb "$BUDGET_MB" --seed "$SEED" --max-side 384
  mv "$deps" "$PACK/deps"
  total=$($PYTHON -c "import sys; print(round(float(sys.argv[1]) + float(sys.argv[2]), 2))" "$tree_mib" "$(find "$PACK" -type f -print0 | mib)")
  stamp "the GPU machine's copy: $total MiB of 64 (tracked and untracked files $tree_mib, $PACK the rest)"
  $PYTHON -c "import sys; sys.exit(float(sys.argv[1]) > 64)" "$total" || { echo "over the 64 MiB the GPU machine copies: lower BUDGET_MB" >&2; exit 1; }
fi

# refsr and its dependencies: installed here; on the GPU machine, from PACK/deps into WORK/site (once per machine)
needs_refsr=0; for stage in pairs retrieval autoencoder diffusion handback unpack eval export; do has $stage && needs_refsr=1; done
if [ $needs_refsr = 1 ]; then
  source scripts/gpu_env.sh
  refsr_env "$PACK/deps" "$WORK/site"
fi

if has pairs; then
  stamp "pairs: Real-ESRGAN x4, $CROP px crops"
  for split in train val test test_general; do
    $REFSR -q degrade $(list $split) -o "$WORK/pairs_$split" --crop "$CROP" --seed "$SEED"
  done
fi

if has retrieval; then
  stamp "retrieval: index the training photos, match every pair (same folder = same species)"
  $REFSR -q index-refs $(list train) --index "$WORK/refs.index" --clip-model "$CLIP_MODEL" \
      --pretrained "$CLIP_PRETRAINED" --device "$DEVICE"
  for split in train val test test_general; do
    [ -s "$WORK/matches_$split.jsonl" ] && continue
    $REFSR -q match "$WORK/pairs_$split/manifest.jsonl" --index "$WORK/refs.index" -o "$WORK/matches_$split.jsonl" \
        --query lr --group-by parent --top-images 10 --top-refs 10 --window "$CROP" --stride $((CROP / 2)) \
        --matcher "$MATCHER" --device "$DEVICE"
  done
fi

common=(--config "$CONFIG" --seed "$SEED" --device "$DEVICE" --workers "$WORKERS" --batch-size "$BATCH"
        --checkpoint-every 500 --log-every 25 --resume)
# Seconds kept back in a SLOT: each training's start, held-out evaluation and export beside its
# cap (not measured on a GPU; generous), and the handback stage
AE_RESERVE=${AE_RESERVE:-45}; DIFFUSION_RESERVE=${DIFFUSION_RESERVE:-60}; HANDBACK_RESERVE=${HANDBACK_RESERVE:-30}
if has autoencoder; then
  # the diffusion's cap and reserves come first
  AE_MAX_MINUTES=$(fit_minutes "$AE_MAX_MINUTES" "$(awk -v m="$MAX_MINUTES" -v r=$((AE_RESERVE + DIFFUSION_RESERVE + HANDBACK_RESERVE)) 'BEGIN { print int(m * 60 + r) }')")
  stamp "autoencoder: $AE_STEPS steps (cap $AE_MAX_MINUTES min), $AE_HOLDOUT of the crops held out; ${ae_start[*]:-from scratch}"
  $REFSR train autoencoder "$WORK/pairs_train/manifest.jsonl" --steps "$AE_STEPS" "${ae_start[@]}" \
      --max-minutes "$AE_MAX_MINUTES" --holdout "$AE_HOLDOUT" --decode "$DECODE" --no-lpips --validate-every 1000 \
      -o "$WORK/runs/vq" "${common[@]}" 2>&1 | tee "$WORK/train_vq.log" | tail -n 3
fi

if has diffusion; then
  MAX_MINUTES=$(fit_minutes "$MAX_MINUTES" $((DIFFUSION_RESERVE + HANDBACK_RESERVE)))
  stamp "diffusion: ldm and ldm-ca, $STEPS steps each (${recipe[*]}; cap $MAX_MINUTES min; ${start[*]:-from scratch}; ldm-ca cross-attention positions $CA_LEVELS)"
  for kind in ldm ldm-ca; do
    self=(); [ "$kind" = ldm-ca ] && [ "$SELF_REF" != 0 ] && self=(--self-ref-fraction "$SELF_REF")
    [ "$kind" = ldm-ca ] && [ "$CA_LEVELS" != model ] && self+=(--ca-levels "$CA_LEVELS")
    $REFSR train diffusion "$WORK/pairs_train/manifest.jsonl" --kind "$kind" "${start[@]}" "${self[@]}" \
        --matches "$WORK/matches_train.jsonl" --vqvae "$WORK/runs/vq" --steps "$STEPS" "${recipe[@]}" \
        --max-minutes "$MAX_MINUTES" --validate-every 0 -o "$WORK/runs/$kind" "${common[@]}" > "$WORK/train_$kind.log" 2>&1 &
  done
  wait
  tail -n 2 "$WORK"/train_ldm*.log
fi

if has handback; then
  stamp "handback: the trained models (float16) and logs -> $RESULTS/trained.tar.part*"
  h="$WORK/handback"; rm -rf "$h"; mkdir -p "$h/runs"
  for kind in vq ldm ldm-ca; do  # what there is: if a training failed, its log still comes home
    mkdir -p "$h/runs/$kind"
    if [ ! -d "$WORK/runs/$kind/model" ]; then   # written at the end of a training run
      echo "  $WORK/runs/$kind/model: no model (see its log)"
    elif [ $kind = vq ]; then cp -r "$WORK/runs/vq/model" "$h/runs/vq/model"   # as trained: the ceiling row's own bytes
    else $PYTHON scripts/experiments/export_half.py "$WORK/runs/$kind/model" "$h/runs/$kind/model" > /dev/null; fi
    for f in metrics.jsonl eval.json; do [ -f "$WORK/runs/$kind/$f" ] && cp "$WORK/runs/$kind/$f" "$h/runs/$kind/"; done
  done
  cp "$WORK"/train_*.log "$h/" 2> /dev/null || true
  cp "$WORK"/matches_*.jsonl "$h/" 2> /dev/null || true   # the eval's references: an eval here needs no retrieval
  parts trained "$h"
fi

if has unpack; then
  stamp "unpack: $RESULTS/trained.tar.part* -> $WORK"
  unparts trained "$WORK"
fi

color_fix_levels() {  # START_COLOR_FIX_LEVELS, or with auto the eval stage's choice
  if [ "$START_COLOR_FIX_LEVELS" != auto ]; then echo "$START_COLOR_FIX_LEVELS"; return; fi
  [ -s "$WORK/eval/levels_val.json" ] || { echo "no $WORK/eval/levels_val.json: run the eval stage first" >&2; return 1; }
  $PYTHON -c "import json, sys; print(json.load(open(sys.argv[1]))['best'])" "$WORK/eval/levels_val.json"
}
steps_done() { $PYTHON -c "import json,sys; print(max(json.loads(l)['step'] for l in open(sys.argv[1]) if l.strip()))" "$1"; }
evaluate() {  # NAME PRED_DIR MANIFEST [EVALUATE_OPTION...]: METRICS into WORK/eval/report_NAME.json
  $REFSR -q evaluate --pred "$2" --gt "$3" --metrics "$METRICS" -o "$WORK/eval/report_$1.json" \
      --csv "$WORK/eval/per_image_$1.csv" --device "$DEVICE" "${@:4}"
}
if has eval; then
  a=$(steps_done "$WORK/runs/ldm/metrics.jsonl"); b=$(steps_done "$WORK/runs/ldm-ca/metrics.jsonl")
  fair="fair: both models made $a optimizer steps"
  [ "$a" = "$b" ] || fair="NOT FAIR: ldm made $a optimizer steps, ldm-ca $b (lower STEPS to what ldm-ca reaches)"
  stamp "$fair"
  mkdir -p "$WORK/eval"
  R="$WORK/restored"; T="$WORK/pairs_test/manifest.jsonl"; G="$WORK/pairs_test_general/manifest.jsonl"
  sample() { $REFSR -q sample "$@" --steps "$SAMPLE_STEPS" --seed "$SEED" --device "$DEVICE"; }
  sample --model "$WORK/runs/ldm/model" "$T" -o "$R/ldm" &
  sample --model "$WORK/runs/ldm-ca/model" "$T" -o "$R/ldm-ca_norefs" &
  sample --model "$WORK/runs/ldm-ca/model" "$T" --matches "$WORK/matches_test.jsonl" -o "$R/ldm-ca" &
  as_shipped=(--start-strength "$START_STRENGTH" --steps "$START_STEPS" --draws "$START_DRAWS" "$mirror")
  if [ "$START_COLOR_FIX_LEVELS" = auto ]; then  # chosen on the validation birds (run 13), for export too
    V="$WORK/pairs_val/manifest.jsonl"
    $REFSR -q sample --model "$WORK/runs/ldm-ca/model" "$V" --matches "$WORK/matches_val.jsonl" --seed "$SEED" \
        --device "$DEVICE" "${as_shipped[@]}" --color-fix none -o "$R/val_none"
    $PYTHON scripts/experiments/levels_probe.py "$V" "$R/val_none" --levels 2,3,4,5,6,7 --json "$WORK/eval/levels_val.json" \
        > "$WORK/eval/levels_val.txt"
  fi
  levels=$(color_fix_levels)
  shipped() {  # MODEL OUT [MATCHES]: sampled as the new model is shipped
    $REFSR -q sample --model "$1" "$T" --matches "${3:-$WORK/matches_test.jsonl}" --seed "$SEED" --device "$DEVICE" \
        "${as_shipped[@]}" --color-fix "$START_COLOR_FIX" --color-fix-levels "$levels" -o "$2"; }
  shipped "$WORK/runs/ldm-ca/model" "$R/ldm-ca_s$START_STRENGTH" &
  for diag in oracle other; do  # does the branch borrow content? the ground truth, then another pair's HR, as the reference
    flag=(); [ $diag = other ] && flag=(--other)
    $PYTHON scripts/experiments/oracle_matches.py "$T" "$WORK/matches_test_$diag.jsonl" "${flag[@]}" > /dev/null
    shipped "$WORK/runs/ldm-ca/model" "$R/ldm-ca_$diag" "$WORK/matches_test_$diag.jsonl" &
  done
  before=(); [ "$INIT_FROM" = none ] || {  # the model before, with its own recommended sampling
    $REFSR -q sample --model "$INIT_FROM" "$T" --matches "$WORK/matches_test.jsonl" --seed "$SEED" --device "$DEVICE" \
        -o "$R/init_shipped" & before=(init_shipped); }
  sample --model "$WORK/runs/ldm-ca/model" "$G" --matches "$WORK/matches_test_general.jsonl" -o "$R/general_ldm-ca" &
  $PYTHON -c "from refsr.demo import bicubic_baseline as b; b('$T', '$R/bicubic'); b('$G', '$R/general_bicubic')"
  $PYTHON scripts/experiments/ae_reconstruct.py "$WORK/runs/vq" "$T" "$R/autoencoder"
  wait
  for name in bicubic autoencoder "${before[@]}" ldm ldm-ca_norefs ldm-ca "ldm-ca_s$START_STRENGTH" ldm-ca_oracle ldm-ca_other; do
    OMP_NUM_THREADS=2 evaluate "$name" "$R/$name" "$T" > "$WORK/eval/eval_$name.txt" &   # side by side: NIQE is CPU work
  done
  for name in bicubic ldm-ca; do OMP_NUM_THREADS=2 evaluate "general_$name" "$R/general_$name" "$G" > "$WORK/eval/eval_general_$name.txt" & done
  rgb=(bicubic autoencoder "${before[@]}" "ldm-ca_s$START_STRENGTH")  # the colour, which Y does not see (run 12)
  for name in "${rgb[@]}"; do
    METRICS=psnr,ssim evaluate "${name}_rgb" "$R/$name" "$T" --color rgb > "$WORK/eval/eval_${name}_rgb.txt" &
  done
  wait
  e="$WORK/eval"
  { echo "# test birds (${SAMPLE_STEPS} DDIM steps from each model's recommended start: from noise, or MAX_STRENGTH $MAX_STRENGTH); $fair"
    names="Bicubic,Autoencoder ceiling,"; reports=("$e/report_bicubic.json" "$e/report_autoencoder.json")
    [ ${#before[@]} = 0 ] || { names+="Before: $INIT_FROM as shipped,"; reports+=("$e/report_${before[0]}.json"); }
    $REFSR evaluate --compare "${reports[@]}" "$e/report_ldm.json" \
        "$e/report_ldm-ca_norefs.json" "$e/report_ldm-ca.json" "$e/report_ldm-ca_s$START_STRENGTH.json" \
        "$e/report_ldm-ca_oracle.json" "$e/report_ldm-ca_other.json" \
        --names "${names}LDM,LDM+CA no refs,LDM+CA,LDM+CA start $START_STRENGTH ($START_STEPS steps; $START_DRAWS draws; ${mirror#--}; $START_COLOR_FIX $levels levels),as shipped with the ground truth as reference (oracle),as shipped with another pair's HR as reference"
    echo "# test birds, RGB (the colour counts: run 12)"
    rgb_names="Bicubic,Autoencoder ceiling,"; [ ${#before[@]} = 0 ] || rgb_names+="Before: $INIT_FROM as shipped,"
    rgb_reports=(); for name in "${rgb[@]}"; do rgb_reports+=("$e/report_${name}_rgb.json"); done
    $REFSR evaluate --compare "${rgb_reports[@]}" --names "${rgb_names}LDM+CA start $START_STRENGTH"
    echo "# test general photos"
    $REFSR evaluate --compare "$e/report_general_bicubic.json" "$e/report_general_ldm-ca.json" --names "Bicubic,LDM+CA"
  } | tee "$e/table.txt"
  $PYTHON scripts/experiments/ablation_grid.py "$WORK" "$e/grid.png" --outputs "$WORK" || true
fi

if has export; then
  e="$WORK/export"; rm -rf "$e"; mkdir -p "$e/reports"
  $PYTHON scripts/experiments/export_half.py "$WORK/runs/ldm-ca/model" "$e/default_model"
  levels=$(color_fix_levels)
  $PYTHON scripts/experiments/recommend.py "$e/default_model" --steps "$START_STEPS" \
      --start-strength "$START_STRENGTH" --draws "$START_DRAWS" --color-fix "$START_COLOR_FIX" \
      --color-fix-levels "$levels" "$mirror"
  cp "$WORK"/eval/*.json "$WORK"/eval/*.txt "$WORK"/eval/grid.png "$WORK"/train_*.log "$e/reports/" 2>/dev/null || true
  cp "$WORK/runs/vq/eval.json" "$e/reports/autoencoder_eval.json"
  for kind in vq ldm ldm-ca; do cp "$WORK/runs/$kind/metrics.jsonl" "$e/reports/metrics_$kind.jsonl"; done
  parts default_model "$e/default_model"
  tar czf "$RESULTS/reports.tar.gz" -C "$e/reports" .
  stamp "results in $RESULTS: default_model.tar.part*, reports.tar.gz"
fi

if has install; then
  ls "$RESULTS"/default_model.tar.part* > /dev/null || { echo "$RESULTS/default_model.tar.part*: not found (run the export stage)" >&2; exit 1; }
  rm -rf refsr/weights/default.new && unparts default_model refsr/weights/default.new
  [ -f refsr/weights/default.new/model_index.json ] || { echo "$RESULTS/default_model.tar.part*: no model_index.json in it" >&2; exit 1; }
  rm -rf refsr/weights/default && mv refsr/weights/default.new refsr/weights/default
  mkdir -p docs/results/default_model
  tar xzf "$RESULTS/reports.tar.gz" -C docs/results/default_model
  stamp "installed refsr/weights/default and docs/results/default_model"
fi
