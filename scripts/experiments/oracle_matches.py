"""A diagnostic matches file: every pair's reference is its own HR crop (the ground truth), with
``--other`` the next pair's HR crop (a real photo that holds nothing of the target), or with
``--noise`` one image of uniform noise for every pair. Sampled with `refsr sample --matches`,
it measures how much the reference branch borrows from a reference's content: a model that
copies gains with the ground truth over another photo; one that does not gains the same from
noise as from its matched references (docs/results.md, runs 9 and 10). Compare a model trained
with views of its own HR against ``--other`` rather than ``--noise``: noise is a reference it
never saw in training. Not a retrieval result: `refsr match` never returns a query's own photo.

    python scripts/experiments/oracle_matches.py work/ft/pairs_val/manifest.jsonl work/ft/matches_val_oracle.jsonl
    python scripts/experiments/oracle_matches.py work/ft/pairs_val/manifest.jsonl work/ft/matches_val_noise.jsonl --noise
    python scripts/experiments/oracle_matches.py work/ft/pairs_val/manifest.jsonl work/ft/matches_val_other.jsonl --other
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
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--noise", action="store_true", help="one uniform-noise image (seed 0) as every pair's reference")
    kind.add_argument("--other", action="store_true", help="the next pair's HR crop (the last pair: the first's)")
    args = ap.parse_args()
    pairs = read_pair_manifest(args.manifest)
    if args.other and len(pairs) < 2:
        ap.error(f"--other needs at least 2 pairs ({args.manifest} has {len(pairs)}): a single pair's 'other' would be itself")
    noise = args.out.parent / f"{args.out.stem}_noise.png"
    if args.noise:
        noise_size = read_rgb(pairs[0]["hr_path"]).shape[:2]
        write_image(noise, np.random.default_rng(0).random((*noise_size, 3)).astype("float32"))
    records = []
    for i, p in enumerate(pairs):
        ref = noise if args.noise else pairs[(i + 1) % len(pairs)]["hr_path"] if args.other else p["hr_path"]
        h, w = noise_size if args.noise else read_rgb(ref).shape[:2]
        records.append({"format": "refsr.matches/1", "id": p["id"], "query": relative_path(args.out, p["lr_path"]),
                        "refs": [{"path": relative_path(args.out, ref), "box": [0, 0, w, h], "score": 1.0, "image_score": 1.0}]})
    write_jsonl(args.out, records)
    what = "noise" if args.noise else "other pairs' ground-truth" if args.other else "ground-truth"
    print(f"wrote {len(records)} {what} reference(s) to {args.out}")


if __name__ == "__main__":
    main()
