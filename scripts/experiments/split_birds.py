#!/usr/bin/env python3
"""Split a species-per-folder photo collection by image, with a fixed seed.

Writes train.txt, val.txt and test.txt (one image path per line) into OUT. Every species
keeps most photos for training and VAL/TEST photos each for validation and testing; the
split is a pure function of the seed and the file names.

    python scripts/experiments/split_birds.py ../shared/data/birds work/split --val 1 --test 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refsr.io import IMAGE_EXTENSIONS
from refsr.seeding import rng_for


def split(root: Path, n_val: int, n_test: int, seed: int) -> dict[str, list[Path]]:
    parts: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for species in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in species.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        order = rng_for(seed, "split", species.name).permutation(len(files))
        chosen = [files[i] for i in order]
        parts["test"] += sorted(chosen[:n_test])
        parts["val"] += sorted(chosen[n_test : n_test + n_val])
        parts["train"] += sorted(chosen[n_test + n_val :])
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--val", type=int, default=1, help="validation photos per species")
    ap.add_argument("--test", type=int, default=2, help="test photos per species")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train-per-species", type=int, default=0, help="0 = all")
    args = ap.parse_args()
    parts = split(args.root, args.val, args.test, args.seed)
    if args.max_train_per_species:
        by_species: dict[str, list[Path]] = {}
        for f in parts["train"]:
            by_species.setdefault(f.parent.name, []).append(f)
        parts["train"] = [f for fs in by_species.values() for f in fs[: args.max_train_per_species]]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, files in parts.items():
        (args.out / f"{name}.txt").write_text("".join(f"{f}\n" for f in files))
        print(f"{name}: {len(files)} images")


if __name__ == "__main__":
    main()
