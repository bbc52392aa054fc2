#!/usr/bin/env python3
"""Pack the development photos into a folder small enough to travel to the GPU machine.

The GPU machine gets a copy of the working tree of at most 64 MiB, tracked files included,
so the photos must fit in what is left (``--budget-mb``). The split is made on the *whole*
collection first (``split_birds.split``: by image, per species, seed 0: the same test photos
as every earlier experiment), then every test and validation photo is packed, then the
general photos (PNG re-encoded as JPEG quality 95, longer side at most ``--max-side``), then
training birds, one per species in turn, until the budget is spent.

    python scripts/experiments/pack_photos.py ../shared/data gpu_data --budget-mb 20

Writes PACK/birds/<Species>/*, PACK/general/<set>/*, PACK/split/{train,val,test,
test_general}.txt (paths relative to the list, as `refsr train autoencoder LIST.txt` reads them;
birds of one species share a folder, so
``refsr match --group-by parent`` finds same-species references) and PACK/pack.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from split_birds import split  # noqa: E402

from refsr.io import list_images  # noqa: E402
from refsr.seeding import rng_for  # noqa: E402


def _copy_jpeg(src: Path, dst: Path, max_side: int) -> int:
    """Copy a JPEG as is, or re-encode another image (quality 95, longer side <= max_side)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if src.suffix.lower() in (".jpg", ".jpeg") and max(img.shape[:2]) <= max_side:
        shutil.copyfile(src, dst)
    else:
        f = min(1.0, max_side / max(img.shape[:2]))
        if f < 1.0:
            img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        dst = dst.with_suffix(".jpg")
        cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return dst.stat().st_size


def pack(data: Path, out: Path, budget_mb: float, seed: int, n_test: int, n_val: int, general_test: float,
         max_side: int) -> dict:
    budget, used = budget_mb * 2**20, 0
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": [], "test_general": []}

    def add(src: Path, rel: Path, split_name: str) -> Path:
        nonlocal used
        dst = out / rel
        size = _copy_jpeg(src, dst, max_side)
        used += size
        written = dst if dst.exists() else dst.with_suffix(".jpg")
        lists[split_name].append(written.relative_to(out).as_posix())
        return written

    parts = split(data / "birds", n_val, n_test, seed)
    for name in ("test", "val"):
        for f in parts[name]:
            add(f, Path("birds") / f.parent.name / f.name, name)
    general = data / "general"
    photos = list_images(general, recursive=True) if general.is_dir() else []
    held = [rng_for(seed, "general-split", f.relative_to(general).as_posix()).random() < general_test for f in photos]
    if len(photos) > 1 and not any(held):  # at least one general test photo
        held[-1] = True
    for f, h in zip(photos, held):
        add(f, Path("general") / f.relative_to(general), "test_general" if h else "train")
    by_species: dict[str, list[Path]] = {}
    for f in parts["train"]:
        by_species.setdefault(f.parent.name, []).append(f)
    turn, full = 0, False
    while not full and any(turn < len(v) for v in by_species.values()):
        for species, files in sorted(by_species.items()):
            if turn < len(files):
                if used + files[turn].stat().st_size > budget:
                    full = True
                    break
                add(files[turn], Path("birds") / species / files[turn].name, "train")
        turn += 1
    (out / "split").mkdir(parents=True, exist_ok=True)
    for name, files in lists.items():
        (out / "split" / f"{name}.txt").write_text("".join(f"../{f}\n" for f in files))
    info = {"source": str(data), "seed": seed, "budget_mb": budget_mb, "mib": round(used / 2**20, 2),
            "birds_train_per_species": turn if full else max(len(v) for v in by_species.values()),
            **{name: len(files) for name, files in lists.items()}}
    (out / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="the shared data folder (birds/, general/)")
    ap.add_argument("out", type=Path, help="the pack folder (must not exist, or be empty)")
    ap.add_argument("--budget-mb", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=2, help="test birds per species")
    ap.add_argument("--val", type=int, default=1, help="validation birds per species")
    ap.add_argument("--general-test", type=float, default=0.1, help="fraction of general photos held out for testing")
    ap.add_argument("--max-side", type=int, default=512, help="longer side of re-encoded general photos")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out}: exists and is not empty; remove it or choose another folder")
    info = pack(args.data, args.out, args.budget_mb, args.seed, args.test, args.val, args.general_test, args.max_side)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
