#!/usr/bin/env python
"""Held-out location accuracy of patch matchers (top-1 / top-10), and the machine.

For each held-out photo, degraded queries (Real-ESRGAN, x4, upsampled back) are located
among all windows of all held-out photos (protocol: refsr.retrieval.matcher_eval). The
held-out images are those of a matcher run (RUN/split.json), or a seeded split of --data.

Examples:
  .venv/bin/python scripts/bench_matcher.py --run runs/matcher-general
  .venv/bin/python scripts/bench_matcher.py --data ../shared/data/general --holdout 0.2 \\
      --matcher trained=runs/matcher-general/model --matcher random=none --matcher imagenet=imagenet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def held_out_paths(args) -> tuple[list[Path], dict]:
    """Held-out images and the settings of the run that defined them (if any)."""
    from refsr.train.data import image_paths, split_images

    if args.run:
        split = json.loads((Path(args.run) / "split.json").read_text())
        root = Path(split["root"])
        return [root / p for p in split["held_out"]], split
    paths, root = image_paths(args.data)
    return split_images(paths, root, args.holdout, args.seed)[1], {}


def run_settings(run: str | None) -> dict:
    """patch / scale / max_side / depth of a matcher run (RUN/run.json, RUN/model/config.json)."""
    if not run:
        return {}
    cfg = json.loads((Path(run) / "model" / "config.json").read_text())
    ev = Path(run) / "eval.json"
    proto = json.loads(ev.read_text())["eval"].get("protocol", {}) if ev.is_file() else {}
    return {"depth": cfg["depth"], "arch": cfg["arch"], **{k: proto[k] for k in ("patch", "scale", "max_side") if k in proto}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a matcher run folder: its held-out split, settings and model")
    ap.add_argument("--data", default="../shared/data/general", help="images to split when no --run")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matcher", action="append", default=[], metavar="NAME=SPEC",
                    help="matchers to compare (default: trained=RUN/model, random=none, imagenet=imagenet)")
    ap.add_argument("--patch", type=int)
    ap.add_argument("--stride", type=int)
    ap.add_argument("--scale", type=int)
    ap.add_argument("--per-image", type=int, default=2)
    ap.add_argument("--max-side", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from refsr.retrieval.matcher_eval import compare_matchers

    settings = run_settings(args.run)
    patch = args.patch or settings.get("patch", 96)
    specs = dict(m.split("=", 1) for m in args.matcher) or {
        **({"trained": str(Path(args.run) / "model")} if args.run else {}), "random": "none", "imagenet": "imagenet"}
    paths, _ = held_out_paths(args)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    t = time.time()
    res = compare_matchers(specs, paths, patch=patch, stride=args.stride or patch // 4,
                           scale=args.scale or settings.get("scale", 4), per_image=args.per_image, seed=args.seed,
                           max_side=args.max_side or settings.get("max_side", 512), device=args.device,
                           depth=args.depth or settings.get("depth", 3), arch=settings.get("arch", "resnet34"))
    print(f"protocol: {json.dumps(res.pop('protocol'))}")
    for name, r in res.items():
        if "unavailable" in r:
            print(f"{name:10s} unavailable: {r['unavailable']}")
        else:
            print(f"{name:10s} top-1 {r['top1']:.3f}  top-10 {r['top10']:.3f}  ({r['queries']} queries, {r['windows']} windows)")
    print(f"total {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
