"""The wavelet levels of the colour fix, swept after sampling (docs/results.md run 13): restore a
pair manifest once with ``refsr sample --color-fix none``, then apply the ``wavelet`` fix with each
number of levels (0 = the bicubic input itself) and the ``luma`` fix to the saved outputs and score
them against the HR (Y-PSNR, border 4; RGB for ``luma``), paired against StableSR's 5 levels.

    refsr sample pairs/manifest.jsonl --matches matches.jsonl --color-fix none -o out_none
    python scripts/experiments/levels_probe.py pairs/manifest.jsonl out_none --levels 0,1,2,3,4,5,6,7

``--json FILE`` also writes the mean Y-PSNR of each level count and the best of them (``best``),
which scripts/train_default_model.sh records as its model's recommended levels.

The fixes are linear before their clamp, so fixing the mean of the decoded draws (what ``refsr
sample`` does) and fixing the saved 8-bit output differ by the rounding only (run 13: within
0.01 dB of `refsr sample --color-fix-levels`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from paired import paired  # scripts/experiments/, this script's folder

from refsr import io
from refsr.io import write_json
from refsr.metrics.fidelity import psnr
from refsr.models.ldm import upsample_lr
from refsr.sample.color_fix import apply_color_fix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="the pairs (refsr degrade's manifest.jsonl)")
    ap.add_argument("restored", type=Path, help="refsr sample's output folder, sampled with --color-fix none")
    ap.add_argument("--levels", default="3,4,5,6", help="comma-separated level counts (0 = bicubic)")
    ap.add_argument("--suffix", default="_sr")
    ap.add_argument("--json", type=Path, help="write {levels: mean Y-PSNR of the wavelet fix, best: its argmax} here")
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    scores: dict[str, list[float]] = {}
    for rec in io.read_pair_manifest(args.manifest):
        hr = io.image_to_tensor(io.read_rgb(rec["hr_path"]), batch=True)
        up = upsample_lr(io.image_to_tensor(io.read_rgb(rec["lr_path"]), (-1, 1), batch=True), rec["scale"])
        out = io.image_to_tensor(io.read_rgb(args.restored / f"{rec['id']}{args.suffix}.png"), (-1, 1), batch=True)
        row = {"none (Y)": psnr((out + 1) / 2, hr, 4)}
        for n in levels:
            row[f"wavelet {n} (Y)"] = psnr((apply_color_fix(out, up, "wavelet", n) + 1) / 2, hr, 4)
            row[f"luma {n} (RGB)"] = psnr((apply_color_fix(out, up, "luma", n) + 1) / 2, hr, 4, color="rgb")
        for name, value in row.items():
            scores.setdefault(name, []).append(float(value))
    print(f"{'':18s} {'mean':>7s}  vs 5 levels (paired SE, better on)")
    for name, values in scores.items():
        v, line = np.array(values), f"{name:18s} {np.mean(values):7.3f}"
        base = scores.get(name.replace(name.split()[1], "5")) if name.split()[0] != "none" else None
        if base is not None:
            mean, se, better = paired(list(v - np.array(base)))
            line += f"  {mean:+.3f} (SE {se:.3f}, {better} of {len(v)})"
        print(line)
    if args.json:
        means = {n: float(np.mean(scores[f"wavelet {n} (Y)"])) for n in levels}
        write_json(args.json, {"manifest": str(args.manifest), "restored": str(args.restored),
                               "images": len(scores["none (Y)"]), "psnr_y": means, "best": max(means, key=means.get)})


if __name__ == "__main__":
    main()
