#!/usr/bin/env python3
"""Picture grid of the reference ablation: for a few test birds, LR (bicubic) | LDM |
LDM+CA | HR, with the reference fragments LDM+CA used under each row.

    python scripts/experiments/ablation_grid.py WORK_DIR OUT.png [--rows 4] [--outputs DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from refsr import io
from refsr.demo import compose_picture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--outputs", type=Path, default=None, help="folder holding restored/ (default: WORK_DIR)")
    args = ap.parse_args()
    restored = (args.outputs or args.work) / "restored"
    pairs = io.read_pair_manifest(args.work / "pairs_test" / "manifest.jsonl")
    run = io.read_json(restored / "ldm-ca" / "run.json")
    images = run.get("images", {})
    step = max(1, len(pairs) // args.rows)
    rows = []
    for rec in pairs[::step][: args.rows]:
        name = f"{rec['id']}_sr.png"
        panels = [(label, io.read_rgb(restored / folder / name))
                  for label, folder in [("LR (bicubic)", "bicubic"), ("LDM", "ldm"), ("LDM+CA", "ldm-ca")]]
        panels.append(("HR", io.read_rgb(rec["hr_path"])))
        frags = []
        for ref in images.get(name, {}).get("refs", [])[:4]:
            x, y, w, h = ref["box"]
            frags.append(io.read_rgb(restored / "ldm-ca" / ref["path"])[y : y + h, x : x + w])
        rows.append(compose_picture(panels, frags))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    io.write_image(args.out, np.concatenate(rows, axis=0).astype(np.float32) / 255.0)
    print(f"grid: {args.out}")


if __name__ == "__main__":
    main()
