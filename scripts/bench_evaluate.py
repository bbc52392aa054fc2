"""Benchmark: images/s of PSNR+SSIM and of NIQE (BasicSR conventions, Y channel) on 512x512 images.

Runs :func:`refsr.metrics.fidelity.psnr_ssim` (batched, vectorised torch; float64 as `refsr
evaluate` uses, and float32) on real
photos (scikit-image's astronaut and coffee, 512x512) against JPEG-degraded copies, for
several batch sizes, and scikit-image's per-image loop as a reference point. Then
:func:`refsr.metrics.niqe.niqe` on the same predictions (batch 1 and the largest batch size)
and, when ``basicsr`` can be imported, BasicSR's per-image ``calculate_niqe`` loop on the
same uint8 images (BasicSR is not a dependency: install it in a separate environment).
Prints the machine and the figures.

    .venv/bin/python scripts/bench_evaluate.py [--images 32] [--batch-sizes 1,8,16] [--threads 2] [--device cpu]
                                               [--niqe-images 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from refsr.metrics import fidelity, niqe


def photos(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 512, 512) ground truth and JPEG-q40 predictions, 8-bit values in [0, 1]."""
    base = [data.astronaut(), cv2.resize(data.coffee(), (512, 512), interpolation=cv2.INTER_AREA)]
    gt, pred = [], []
    for i in range(n):
        img = np.ascontiguousarray(np.roll(base[i % 2], 7 * i, axis=1))
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])
        gt.append(img)
        pred.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    to_t = lambda xs: torch.from_numpy(np.stack(xs).astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return to_t(pred), to_t(gt)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}; {os.cpu_count()} logical cores; torch {torch.__version__}, {torch.get_num_threads()} threads; load avg {load:.1f}"


def bench_torch(pred, gt, batch: int, device: torch.device, border: int, dtype=torch.float64) -> float:
    fidelity.psnr_ssim(pred[:batch].to(device), gt[:batch].to(device), border=border, dtype=dtype)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(pred), batch):
        p, s = fidelity.psnr_ssim(pred[i:i + batch].to(device), gt[i:i + batch].to(device), border=border, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(pred) / (time.perf_counter() - start)


def bench_skimage(pred, gt, n: int, border: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        y_p = fidelity.prepare(pred[i:i + 1], border)[0, 0].numpy()
        y_g = fidelity.prepare(gt[i:i + 1], border)[0, 0].numpy()
        peak_signal_noise_ratio(y_g, y_p, data_range=255)
        structural_similarity(y_g, y_p, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    return n / (time.perf_counter() - start)


def bench_niqe(pred, batch: int, device: torch.device, border: int) -> float:
    niqe.niqe(pred[:batch].to(device), border)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(pred), batch):
        niqe.niqe(pred[i:i + batch].to(device), border)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(pred) / (time.perf_counter() - start)


def bench_basicsr_niqe(pred, border: int) -> float | None:
    """BasicSR's calculate_niqe over the same images (uint8 BGR HWC), or None if not importable."""
    try:
        from basicsr.metrics.niqe import calculate_niqe
    except ImportError:
        return None
    images = [np.ascontiguousarray((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[:, :, ::-1]) for p in pred]
    start = time.perf_counter()
    for img in images:
        calculate_niqe(img, border, input_order="HWC", convert_to="y")
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crop-border", type=int, default=4)
    ap.add_argument("--niqe-images", type=int, default=8, help="images for the NIQE figures (0: skip NIQE)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pred, gt = photos(args.images)
    print(f"machine: {machine()}; device {device}")
    print(f"PSNR+SSIM, Y channel, crop {args.crop_border}, {args.images} pairs of 512x512")
    for dtype in (torch.float64, torch.float32):
        for b in (int(x) for x in args.batch_sizes.split(",")):
            rate = bench_torch(pred, gt, b, device, args.crop_border, dtype)
            print(f"  refsr torch {str(dtype).replace('torch.', ''):>7}, batch {b:>3}: {rate:8.1f} images/s")
    n_ref = min(args.images, 8)
    print(f"  scikit-image loop ({n_ref} pairs): {bench_skimage(pred, gt, n_ref, args.crop_border):8.1f} images/s")
    if args.niqe_images > 0:
        sub = pred[:args.niqe_images]
        print(f"NIQE, Y channel, crop {args.crop_border}, {len(sub)} images of 512x512")
        for b in sorted({1, max(int(x) for x in args.batch_sizes.split(","))}):
            print(f"  refsr torch float64, batch {b:>3}: {bench_niqe(sub, b, device, args.crop_border):8.1f} images/s")
        rate = bench_basicsr_niqe(sub, args.crop_border)
        print(f"  BasicSR calculate_niqe loop: {rate:8.1f} images/s" if rate else "  BasicSR calculate_niqe loop: basicsr not importable, skipped")


if __name__ == "__main__":
    main()
