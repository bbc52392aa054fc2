"""Benchmark of `refsr degrade`: Real-ESRGAN pairs per second for square HR crops, x4.

numpy/OpenCV path on one worker and on all cores (processes), torch batched
(``degrade_batch``) on the CPU and on CUDA when present. Prints the machine and the figures.
``--check`` also compares the torch executor on each device with the numpy executor on the
same records (the bounds of tests/test_degrade.py). Not a test.

    python scripts/bench_degrade.py [--n 64] [--batch 32] [--sizes 512]
    python scripts/bench_degrade.py --sizes 224,512 --n 512 --batch 64 --devices cuda --skip-numpy --check   # GPU target
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

    if workers == 1:
        _numpy_chunk((crops[:2], 10_000))  # warm-up
        t = time.perf_counter()
        _numpy_chunk((crops, 0))
        return len(crops) / (time.perf_counter() - t)
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_numpy_chunk, [(crops[:1], 20_000 + i) for i in range(workers)])  # warm-up
        t = time.perf_counter()
        # one crop per task, handed out as workers free up (as `refsr degrade` does): crops
        # differ in cost (kernel sizes, sinc, resize factors), so equal static chunks would
        # leave one worker idle at the end and understate the scaling
        list(pool.imap_unordered(_numpy_chunk, [(crops[i : i + 1], i) for i in range(len(crops))], chunksize=1))
        return len(crops) / (time.perf_counter() - t)


def bench_torch(crops: np.ndarray, device: str, batch: int, repeats: int = 3) -> float:
    """Crops per second of ``degrade_batch`` on ``device`` (median of ``repeats`` passes over
    the crops, after one warm-up batch), the records drawn beforehand (as a data loader would)."""
    import statistics

    import torch

    from refsr.degrade import resolve_config, sample_params
    from refsr.degrade.torch_exec import degrade_batch

    cfg = resolve_config("realesrgan")
    hr = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().to(device)
    params = [sample_params(0, f"t{i}", cfg) for i in range(len(crops))]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    degrade_batch(hr[:batch], params[:batch], 4)  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(crops), batch):
            degrade_batch(hr[i : i + batch], params[i : i + batch], 4)
        sync()
        times.append(time.perf_counter() - t)
    return len(crops) / statistics.median(times)


def check_torch(crops: np.ndarray, device: str) -> str:
    """The torch executor on ``device`` against the numpy one, same records (Gaussian noise
    drawn as numpy does): the bounds of tests/test_degrade.py (mean < 3/255, p99 < 24/255)."""
    import torch

    from refsr.degrade import degrade_image, resolve_config, sample_params
    from refsr.degrade.torch_exec import degrade_batch

    crops = crops[:16]
    params = [sample_params(5, f"c{i}", resolve_config("realesrgan")) for i in range(len(crops))]
    for k, p in enumerate(params):
        p["stage1"]["noise"] = {"kind": "gaussian", "sigma": 10.0, "gray": False, "seed": 2 * k}
        p["stage2"]["noise"] = {"kind": "gaussian", "sigma": 8.0, "gray": True, "seed": 2 * k + 1}
    lr = degrade_batch(torch.from_numpy(crops).permute(0, 3, 1, 2).to(device), params, 4, noise_from_numpy=True)
    lr = lr.permute(0, 2, 3, 1).cpu().numpy()
    diff = np.concatenate([np.abs(lr[i] - degrade_image(c, p, 4)[1]).ravel() for i, (c, p) in enumerate(zip(crops, params))])
    mean, p99 = diff.mean() * 255, np.quantile(diff, 0.99) * 255
    verdict = "ok" if mean < 3 and p99 < 24 else "FAILS"
    return f"vs numpy on 16 crops: mean |diff| {mean:.2f}/255, p99 {p99:.1f}/255 ({verdict}: bounds 3, 24)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="crops per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", default="512", help="HR crop sizes in px, comma separated")
    ap.add_argument("--devices", default=None, help="torch devices, comma separated (default: cpu, and cuda if present)")
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--skip-cpu-torch", action="store_true")
    ap.add_argument("--check", action="store_true", help="also compare each torch device with the numpy executor")
    args = ap.parse_args()
    import cv2
    import torch

    cores = os.cpu_count() or 1
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, torch {torch.__version__}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [d for d in devices if not (d == "cpu" and args.skip_cpu_torch)]
    torch.set_num_threads(cores)
    for size in (int(v) for v in args.sizes.split(",")):
        crops = _crops(args.n, size)
        print(f"# {size}x{size} HR crops, realesrgan, x4")
        if not args.skip_numpy:
            print(f"numpy, 1 worker      : {bench_numpy(crops, 1):7.1f} crops/s")
            if cores > 1:
                allc = bench_numpy(crops, cores)
                print(f"numpy, {cores} workers    : {allc:7.1f} crops/s ({allc / cores:.1f} per core)")
        for device in devices:
            print(f"torch {device}, batch {args.batch} : {bench_torch(crops, device, args.batch):7.1f} crops/s", flush=True)
            if args.check:
                print(f"torch {device} {check_torch(crops, device)}", flush=True)


if __name__ == "__main__":
    main()
