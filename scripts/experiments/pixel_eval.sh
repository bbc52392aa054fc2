#!/bin/bash
# The pixel loss (`refsr train diffusion --pixel-loss-weight`), as in docs/results.md run 14: the
# shipped model against its two continuations by scripts/experiments/finetune_cpu.sh (run 7's recipe
# for the same steps, with and without the pixel loss), each sampled as the shipped model recommends
# (4 DDIM steps from 0.5, 4 draws, two mirrored, the luma fix with 4 levels) with matched references,
# on the validation birds, the test birds (the 70 of runs 3-13) and the 15 general test photos; the
# test birds also without references. PSNR/SSIM on the Y channel (with NIQE) and on RGB, paired.
#   scripts/experiments/pixel_eval.sh [STAGE...]     stages: val test general (default: all)
# Knobs: WORK [work/pixel] MODELS ["shipped=refsr/weights/default latent=work/ft/runs/latent14/model
#   pixel=work/ft/runs/pixel14/model"] (NAME=FOLDER; the first is the one the others are paired against)
#   and the splits of heldout.sh: VAL, VAL_MATCHES, TEST, TEST_MATCHES, PACK, INDEX
set -euo pipefail
WORK=${WORK:-work/pixel}
MODELS=${MODELS:-shipped=refsr/weights/default latent=work/ft/runs/latent14/model pixel=work/ft/runs/pixel14/model}
. "$(dirname "$0")/heldout.sh"  # the splits, their knobs, STAGES, has(), each_split(), evaluate(), bicubic(), paired() and paired_all()
shipped=(--steps 4 --start-strength 0.5 --draws 4 --mirror --color-fix luma --color-fix-levels 4 --seed 0 --device cpu)

score() {  # SPLIT: bicubic, then each of MODELS (on the test birds also without references), scored and paired
  local split=$1 entry name names=()
  bicubic "${split}_bicubic" "$m"
  for entry in $MODELS; do
    name=${split}_${entry%%=*}; names+=("$name")
    refsr -q sample --model "${entry#*=}" "$m" --matches "$mt" "${shipped[@]}" -o "$WORK/restored/$name"
    evaluate "$name" "$WORK/restored/$name" "$m"
    if [ "$split" = test ]; then
      refsr -q sample --model "${entry#*=}" "$m" "${shipped[@]}" -o "$WORK/restored/${name}_norefs"
      evaluate "${name}_norefs" "$WORK/restored/${name}_norefs" "$m"
      paired "${name}_norefs" "$name"
    fi
  done
  paired_all "$split" "${names[@]}"
}
each_split score
