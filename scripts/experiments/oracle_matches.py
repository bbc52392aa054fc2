"""A diagnostic matches file: every pair's reference is its own HR crop (the ground truth), or
with ``--noise`` one image of uniform noise for every pair. Sampled with `refsr sample
--matches`, it measures how much the reference branch borrows from a reference's content: a
model that copies gains most with the ground truth; one that does not gains the same from noise
as from its matched references (docs/results.md, run 9). Not a retrieval result: `refsr match`
never returns a query's own photo.

    python scripts/experiments/oracle_matches.py work/ft/pairs_val/manifest.jsonl work/ft/matches_val_oracle.jsonl
    python scripts/experiments/oracle_matches.py work/ft/pairs_val/manifest.jsonl work/ft/matches_val_noise.jsonl --noise
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from refsr.io import read_pair_manifest, read_rgb, relative_path, write_image, write_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="pair manifest (refsr degrade)")
    ap.add_argument("out", type=Path, help="matches file to write")
    ap.add_argument("--noise", action="store_true", help="one uniform-noise image (seed 0) as every pair's reference")
    args = ap.parse_args()
    pairs = read_pair_manifest(args.manifest)
    noise = args.out.parent / f"{args.out.stem}_noise.png"
    if args.noise:
        noise_size = read_rgb(pairs[0]["hr_path"]).shape[:2]
        write_image(noise, np.random.default_rng(0).random((*noise_size, 3)).astype("float32"))
    records = []
    for p in pairs:
        ref = noise if args.noise else p["hr_path"]
        h, w = noise_size if args.noise else read_rgb(ref).shape[:2]
        records.append({"format": "refsr.matches/1", "id": p["id"], "query": relative_path(args.out, p["lr_path"]),
                        "refs": [{"path": relative_path(args.out, ref), "box": [0, 0, w, h], "score": 1.0, "image_score": 1.0}]})
    write_jsonl(args.out, records)
    print(f"wrote {len(records)} {'noise' if args.noise else 'ground-truth'} reference(s) to {args.out}")


if __name__ == "__main__":
    main()
