"""Record in a model folder how it should be sampled: ``recipe.recommended_steps``,
``recommended_start_strength``, ``recommended_color_fix``, ``recommended_color_fix_levels``,
``recommended_draws`` and ``recommended_mirror`` in its model_index.json, which `refsr sample` and
`refsr demo` use when --steps, --start-strength, --color-fix, --color-fix-levels, --draws and
--mirror are left out (refsr.sample.recommended_settings). Choose them on
held-out images that are neither training nor test (docs/results.md, runs 5 and 6: the
validation birds). Only the values given are written; the others stay as they are.

    python scripts/experiments/recommend.py refsr/weights/default --steps 4 --start-strength 0.5 \
        --color-fix luma --color-fix-levels 4 --draws 4 --mirror

The values are checked as `refsr sample` checks them (a start strength above the model's
recipe.max_strength is refused) before the file is rewritten (atomically).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from refsr.errors import InputError
from refsr.io import read_json, write_json
from refsr.models import RefSRModel
from refsr.sample import COLOR_FIXES, SampleSettings
from refsr.sample.color_fix import WAVELET_FIXES
from refsr.sample.core import resolve_settings
from refsr.sample.samplers import sampling_timesteps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a refsr model folder (model_index.json)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--start-strength", type=float)
    ap.add_argument("--color-fix", choices=COLOR_FIXES)
    ap.add_argument("--color-fix-levels", type=int)
    ap.add_argument("--draws", type=int)
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None)
    args = ap.parse_args()
    given = {"steps": args.steps, "start_strength": args.start_strength, "color_fix": args.color_fix,
             "color_fix_levels": args.color_fix_levels, "draws": args.draws, "mirror": args.mirror}
    given = {k: v for k, v in given.items() if v is not None}
    model = RefSRModel.from_pretrained(args.model)
    try:  # refuses what `refsr sample` would refuse
        settings = resolve_settings(model, dataclasses.replace(SampleSettings(), **given))
    except (InputError, ValueError) as e:
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
    index = args.model / "model_index.json"
    meta = read_json(index)
    meta["recipe"] = dict(sorted({**meta.get("recipe", {}), **{f"recommended_{k}": v for k, v in given.items()}}.items()))
    write_json(index, meta)
    fix = settings.color_fix + (f" ({settings.color_fix_levels} levels)" if settings.color_fix in WAVELET_FIXES else "")
    timesteps = sampling_timesteps(settings.sampler, model.scheduler_config, settings.steps, settings.start_strength)
    print(f"{index}: {settings.steps} steps, start strength {settings.start_strength:g}, colour fix {fix}, "
          f"{settings.draws} draw(s){', every second mirrored' if settings.mirror else ''}: timesteps {timesteps}")


if __name__ == "__main__":
    main()
