"""Benchmark the memory format of sampling: the shipped model (or ``--model``) restoring random
inputs with its recommended sampling, its weights in the default (NCHW) layout against
channels-last (NHWC, what `refsr sample` uses on the CPU: ``refsr.device.prefer_channels_last``),
interleaved in one process; median seconds per image, the ratio, and the largest output difference.

    python scripts/bench_channels_last.py --threads 1
    python scripts/bench_channels_last.py --device cuda --sizes 128,256 --refs 0,10
"""

from __future__ import annotations

import argparse
import copy

import torch
from bench_sample import interleaved  # scripts/, this script's folder

from refsr.models import RefSRModel
from refsr.sample.core import restore_tensor
from refsr.sample.loading import resolve_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model folder (default: the shipped model)")
    ap.add_argument("--sizes", default="32,64,128", help="LR sides in pixels")
    ap.add_argument("--refs", default="0,4", help="numbers of 128 px references")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plain = RefSRModel.from_pretrained(resolve_model_path(args.model), device=device).eval().requires_grad_(False)
    nhwc = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    print(f"# {args.device}, {torch.get_num_threads()} thread(s); seconds per image (median of {args.repeats})")
    print(f"{'LR px':>6} {'refs':>4} {'NCHW s':>8} {'NHWC s':>8} {'ratio':>6} {'max diff':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        for n in (int(r) for r in args.refs.split(",")):
            lr = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device)
            refs = (torch.rand(1, n, 3, 128, 128, generator=g) * 2 - 1).to(device) if n else None

            def run(model):
                return restore_tensor(model, lr, refs, generator=torch.Generator().manual_seed(1), disable=True)

            diff = (run(plain) - run(nhwc)).abs().max().item()
            res = interleaved({"plain": lambda: run(plain), "nhwc": lambda: run(nhwc)}, device, args.repeats)
            a, b = res["plain"][0], res["nhwc"][0]
            print(f"{size:>6} {n:>4} {a:>8.3f} {b:>8.3f} {b / a:>5.2f}x {diff:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
