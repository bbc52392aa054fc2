"""Peak memory of `refsr sample` against the input's size: does it stay flat once tiling starts?

Each (LR size, variant, LR-context cap) runs in a fresh process: one image sampled with random
weights (`refsr.sample.core.restore_tensor`, as `refsr sample` calls it), and its peak memory
above the loaded models and inputs (sampled RSS on the CPU, the allocator's peak on CUDA). A
fresh process per call matters on the CPU: freed memory that the allocator keeps would hide a
later call's peak. What must grow with the image are its full-size canvases (the upsampled
input, the output, the tiles' blend weights and sums); the model's work is bounded by the tile.
So once there is more than one tile the peak should be a fixed amount (the model's) plus a few
bytes per output pixel, the same with any number of tiles: the last lines fit that line.

    python scripts/bench_memory.py                     # CPU: small config, 64-512 px LR, tile 64
    python scripts/bench_memory.py --device cuda --config paper --sizes 128,256,512,1024 --tile 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from bench_sample import PeakMemory, build_models  # scripts/, this script's folder


def _one(spec: dict) -> dict:
    """Sample one image as ``spec`` says; its peak bytes above the loaded state, and its tiles."""
    import refsr.sample.core as core
    from refsr.sample import SampleSettings, restore_tensor

    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(spec["threads"])
    core.LR_CONTEXT_CACHE_BYTES = int(spec["lr_cache_mb"] * 2**20)
    ldm, ca, _ = build_models(spec["config"], device)
    model = ca if spec["refs"] else ldm
    settings = SampleSettings(steps=spec["steps"], tile=spec["tile"], tile_overlap=spec["overlap"], color_fix="none")
    torch.manual_seed(0)
    lr = torch.rand(1, 3, spec["size"], spec["size"], device=device) * 2 - 1
    refs = torch.rand(1, spec["refs"], 3, ca.ref_size, ca.ref_size, device=device) * 2 - 1 if spec["refs"] else None
    tiles = core._plan(model, lr, settings).tiles
    with PeakMemory(device) as mem:
        restore_tensor(model, lr, refs, settings=settings, generator=torch.Generator().manual_seed(0), disable=True)
    return {"peak": mem.peak, "tiles": len(tiles) if tiles else 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128,256,512", help="LR sides in pixels")
    ap.add_argument("--refs", type=int, default=10, help="references of the ldm-ca rows")
    ap.add_argument("--config", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tile", type=int, default=64, help="tile in LR px (refsr sample --tile)")
    ap.add_argument("--overlap", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="DDIM steps (memory does not depend on them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(json.loads(args.one))))
        return

    base = {"device": args.device, "config": args.config, "tile": args.tile, "overlap": args.overlap,
            "steps": args.steps, "threads": args.threads}
    columns = [("ldm", 0, 1024), (f"ldm-ca {args.refs}", args.refs, 1024), (f"ldm-ca {args.refs}, no LR cache", args.refs, 0)]
    print(f"# bench_memory: {args.device}, config {args.config}, tile {args.tile}/{args.overlap} LR px, "
          f"{args.steps} DDIM steps, no colour fix, torch {torch.__version__}; peak MB above the loaded models "
          f"({'CUDA allocated' if args.device.startswith('cuda') else 'sampled RSS'}), each in a fresh process")
    print(f"{'LR px':>6} {'out Mpx':>8} {'tiles':>5}  " + "  ".join(f"{name:>24}" for name, _, _ in columns))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        peaks, tiles = [], None
        for _, refs, cache in columns:
            spec = {**base, "size": size, "refs": refs, "lr_cache_mb": cache}
            run = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"{spec}: {run.stderr.strip().splitlines()[-1]}")
            got = json.loads(run.stdout.splitlines()[-1])
            peaks.append(got["peak"] / 2**20)
            tiles = got["tiles"]
        rows.append((16 * size * size / 1e6, tiles, peaks))
        print(f"{size:>6} {rows[-1][0]:>8.2f} {tiles:>5}  " + "  ".join(f"{p:>24.0f}" for p in peaks), flush=True)
    tiled = [r for r in rows if r[1] > 1]
    if len(tiled) >= 2:  # least squares over the tiled sizes: peak = fixed + per-pixel x output pixels
        xs = [r[0] for r in tiled]
        for i, (name, _, _) in enumerate(columns):
            ys = [r[2][i] for r in tiled]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            print(f"# {name}, tiled: peak = {my - slope * mx:.0f} MB + {slope * 2**20 / 1e6:.0f} bytes per output pixel")


if __name__ == "__main__":
    main()
