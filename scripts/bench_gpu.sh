#!/usr/bin/env bash
# The GPU benchmarks of issue 16 in one go, about 6 minutes on one H100. GPU time is scarce:
# run it after the model-quality training run has its results.
#
#   scripts/bench_gpu.sh [LOGS]      (LOGS: folder for the outputs; default $OUT, else bench_gpu/)
#
# On the GPU machine, whose image lacks diffusers, open_clip and hnswlib, carry gpu_data/deps (made
# by `scripts/train_default_model.sh pack`); they are set up in SITE [work/default_model/site, the
# training run's, so a warm machine sets them up once] by scripts/gpu_env.sh. PYTHON [python3].
#
# 1. degrade_batch, Real-ESRGAN x4, batch 64, 512 crops: 224 px and 512 px
#    (targets >= 2000 and >= 500 crops/s), then the torch-on-GPU vs numpy agreement check.
# 2. sample, `paper` config (random weights), bf16, 128 px LR -> 512x512 (one tile), ldm and
#    ldm-ca with 0 and 10 references side by side: DDIM-50 (target <= 1.0 s per image with
#    10 references) and DPM-Solver++-20 (<= 0.5 s); ldm-ca 10 refs <= 1.3x ldm, 0 refs <= 1.02x.
# 3. sample --quick (fp32, 10 DDIM steps, 128/256/512 px LR, 0/1/10 references): the table of docs/sample.md.
# 4. Peak memory once tiled with no LR context kept (flat in image size) and what it costs.
# 5. The shipped model's sampling (4 DDIM steps from 0.5, 4 draws, two mirrored), `small` config, fp32, 64/128/256 px
#    LR: one U-Net call per draw (--batch-size 1) against the 4 draws in one call (--batch-size 4).
# 6. The shipped model, fp32, its weights NCHW against channels-last (what `refsr sample` uses on the CPU,
#    about 0.9x the time there): whether the GPU should use it too.
# 7. The numpy degrade on the machine's CPU cores, one worker against all of them (the 16-core figure
#    issue 16 asks for; 224 and 512 px, 256 crops). Eight output files: what the machine returns.
# A step that fails is noted in its file and the next one runs; the failed ones are listed at the
# end (exit 1). tests/test_bench_gpu.py checks that every command here parses with its script.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-${OUT:-bench_gpu}}
mkdir -p "$LOGS"
source scripts/gpu_env.sh
refsr_env "${DEPS:-gpu_data/deps}" "${SITE:-work/default_model/site}"
failed=()
run() {  # NAME SCRIPT ARGS...: LOGS/NAME.txt; a failed step is noted and the next one runs (the GPU minutes are few)
  local name=$1 rc; shift
  echo "== $name: $PYTHON $*"
  set +e; $PYTHON "$@" 2>&1 | tee "$LOGS/$name.txt"; rc=${PIPESTATUS[0]}; set -e
  if [ "$rc" != 0 ]; then echo "== $name: failed (exit $rc); going on" | tee -a "$LOGS/$name.txt"; failed+=("$name"); fi
}
run degrade scripts/bench_degrade.py --devices cuda --skip-numpy --sizes 224,512 --n 512 --batch 64 --check
run sample_bf16_ddim50 scripts/bench_sample.py --config paper --sizes 128 --refs 0,10 --tile 128 \
    --precision bf16 --sampler ddim --steps 50 --repeats 5
run sample_bf16_dpmpp20 scripts/bench_sample.py --config paper --sizes 128 --refs 0,10 --tile 128 \
    --precision bf16 --sampler dpmpp --steps 20 --repeats 5
run sample_quick_fp32 scripts/bench_sample.py --quick --repeats 2
run sample_no_lr_cache scripts/bench_sample.py --quick --sizes 256,512 --refs 10 --repeats 1 --lr-cache-mb 0
run sample_draws_batched scripts/bench_sample.py --config small --sizes 64,128,256 --refs 0,10 --tile 128 \
    --steps 4 --start-strength 0.5 --draws 4 --mirror --compare-batch 4 --repeats 3
run sample_channels_last scripts/bench_channels_last.py --device cuda --sizes 64,128,256 --refs 0,4 --repeats 5
run degrade_numpy_cores scripts/bench_degrade.py --devices cpu --skip-cpu-torch --sizes 224,512 --n 256
if [ ${#failed[@]} -gt 0 ]; then echo "failed: ${failed[*]} (their output: $LOGS/NAME.txt)" >&2; exit 1; fi
