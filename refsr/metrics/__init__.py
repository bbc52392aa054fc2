"""Evaluation metrics with the super-resolution field's conventions (see docs/sections/evaluate.md).

- :mod:`refsr.metrics.fidelity`: PSNR and SSIM as BasicSR computes them (batched torch).
- :mod:`refsr.metrics.perceptual`: LPIPS, CLIP-IQA and FID, with weight availability checks.
- :mod:`refsr.metrics.report`: pairing folders, running the metrics, report files, comparison.
"""

from .fidelity import prepare, psnr, psnr_ssim, rgb_to_y, ssim
from .perceptual import fid_from_features, frechet_distance

__all__ = ["prepare", "psnr", "psnr_ssim", "rgb_to_y", "ssim", "fid_from_features", "frechet_distance"]
