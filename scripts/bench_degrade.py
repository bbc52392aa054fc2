"""Benchmark of `refsr degrade`: Real-ESRGAN pairs per second for 512x512 HR crops.

numpy/OpenCV path on one worker and on all cores (processes), torch batched on CPU and on
CUDA when present. Prints the machine and the figures. Not a test.

    python scripts/bench_degrade.py [--n 64] [--batch 32] [--crop 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def _crops(n: int, crop: int) -> np.ndarray:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = photos[i % len(photos)].astype(np.float32) / 255
        img = np.pad(img, ((0, max(0, crop - img.shape[0])), (0, max(0, crop - img.shape[1])), (0, 0)), mode="reflect")
        y, x = rng.integers(0, img.shape[0] - crop + 1), rng.integers(0, img.shape[1] - crop + 1)
        out.append(np.ascontiguousarray(img[y : y + crop, x : x + crop]))
    return np.stack(out)


def _numpy_chunk(args):
    import cv2

    from refsr.degrade import degrade_image, resolve_config, sample_params

    cv2.setNumThreads(1)
    crops, start = args
    cfg = resolve_config("realesrgan")
    for i, hr in enumerate(crops):
        degrade_image(hr, sample_params(0, f"b{start + i}", cfg), 4)
    return len(crops)


def bench_numpy(crops: np.ndarray, workers: int) -> float:
    import multiprocessing as mp

    chunks = [(crops[i::workers], i * len(crops)) for i in range(workers)]
    if workers == 1:
        _numpy_chunk((crops[:2], 10_000))  # warm-up
        t = time.perf_counter()
        _numpy_chunk(chunks[0])
        return len(crops) / (time.perf_counter() - t)
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_numpy_chunk, [(crops[:1], 20_000 + i) for i in range(workers)])  # warm-up
        t = time.perf_counter()
        pool.map(_numpy_chunk, chunks)
        return len(crops) / (time.perf_counter() - t)


def bench_torch(crops: np.ndarray, device: str, batch: int) -> float:
    import torch

    from refsr.degrade import resolve_config, sample_params
    from refsr.degrade.torch_exec import degrade_batch

    cfg = resolve_config("realesrgan")
    hr = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().to(device)
    params = [sample_params(0, f"t{i}", cfg) for i in range(len(crops))]
    degrade_batch(hr[:2], params[:2], 4)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(crops), batch):
        degrade_batch(hr[i : i + batch], params[i : i + batch], 4)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(crops) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="crops per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--skip-cpu-torch", action="store_true")
    args = ap.parse_args()
    import cv2
    import torch

    cores = os.cpu_count() or 1
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, torch {torch.__version__}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    crops = _crops(args.n, args.crop)
    one = bench_numpy(crops, 1)
    print(f"numpy, 1 worker      : {one:7.1f} crops/s ({args.crop}x{args.crop}, realesrgan, x4)")
    if cores > 1:
        allc = bench_numpy(crops, cores)
        print(f"numpy, {cores} workers    : {allc:7.1f} crops/s ({allc / cores:.1f} per core)")
    if not args.skip_cpu_torch:
        torch.set_num_threads(cores)
        print(f"torch cpu, batch {args.batch}  : {bench_torch(crops, 'cpu', args.batch):7.1f} crops/s")
    if torch.cuda.is_available():
        print(f"torch cuda, batch {args.batch} : {bench_torch(crops, 'cuda', args.batch):7.1f} crops/s")


if __name__ == "__main__":
    main()
