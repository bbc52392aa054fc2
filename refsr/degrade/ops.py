"""Degradation steps as pure numpy/OpenCV functions, every setting in the signature.

Images are (H, W, 3) float32 RGB in [0, 1] unless stated. Names follow BasicSR's
``degradations.py`` (``add_gaussian_noise``, ``add_poisson_noise``, ``add_jpg_compression``,
``usm_sharp``); randomness comes from an explicit ``np.random.Generator``, never a global.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

RESIZE_MODES = ("area", "bilinear", "bicubic")
_CV2_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
# ITU-R BT.601 luma, as cv2.COLOR_RGB2GRAY and torchvision's rgb_to_grayscale.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------
# Filtering and resizing
# ---------------------------------------------------------------------------------------


def filter2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel with ``kernel`` (k, k), reflect-101 borders (BasicSR ``filter2D``)."""
    return cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize to ``size`` = (height, width) without antialiasing (as ``F.interpolate``);
    ``area`` is the exact pixel-overlap average (OpenCV ``INTER_AREA``)."""
    if mode not in _CV2_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    h, w = int(size[0]), int(size[1])
    if (h, w) == img.shape[:2]:
        return img
    out = cv2.resize(img, (w, h), interpolation=_CV2_MODES[mode])
    return out if out.ndim == 3 else out[:, :, None]


def stage_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Output (h, w) of a resize by ``factor``: floor, at least 1 (``F.interpolate`` sizes)."""
    return max(1, int(height * factor)), max(1, int(width * factor))


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys cubic convolution kernel (MATLAB's imresize uses a = -0.5)."""
    ax = np.abs(x)
    return np.where(
        ax <= 1,
        (a + 2) * ax**3 - (a + 3) * ax**2 + 1,
        np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0),
    )


def matlab_bicubic_weights(in_len: int, out_len: int) -> np.ndarray:
    """(out_len, in_len) float32 matrix of MATLAB ``imresize`` bicubic with antialiasing.

    1. Output pixel i maps to u = (i + 0.5) * in/out - 0.5 in input coordinates.
    2. When shrinking, the cubic kernel is widened by in/out (antialiasing).
    3. Taps outside the image are mirrored (``symmetric`` padding) and weights normalised.
    """
    scale = out_len / in_len
    widen = min(scale, 1.0)
    support = 2.0 / widen
    centre = (np.arange(out_len) + 0.5) / scale - 0.5
    left = np.floor(centre - support).astype(int)
    taps = left[:, None] + np.arange(int(math.ceil(2 * support)) + 2)[None, :]
    w = widen * _cubic(widen * (centre[:, None] - taps))
    w /= w.sum(axis=1, keepdims=True)
    idx = np.where(taps < 0, -taps - 1, taps)  # symmetric: -1 -> 0, -2 -> 1
    idx = np.where(idx >= in_len, 2 * in_len - 1 - idx, idx)
    idx = np.clip(idx, 0, in_len - 1)
    out = np.zeros((out_len, in_len), np.float64)
    np.add.at(out, (np.repeat(np.arange(out_len), taps.shape[1]), idx.ravel()), w.ravel())
    return out.astype(np.float32)


def imresize_matlab(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize with antialiasing as MATLAB ``imresize`` (the classic SR setting)."""
    h, w = img.shape[:2]
    ry = matlab_bicubic_weights(h, int(size[0]))
    rx = matlab_bicubic_weights(w, int(size[1]))
    out = np.tensordot(ry, img, axes=(1, 0))  # (oh, w, c)
    return np.ascontiguousarray(np.einsum("ow,hwc->hoc", rx, out), dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W) BT.601 luma of an (H, W, 3) RGB image."""
    return img @ np.asarray(GRAY_WEIGHTS, dtype=img.dtype)


def generate_gaussian_noise(shape: tuple[int, int, int], sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 N(0, (sigma/255)^2) noise; ``gray``: one field for all channels.
    ``sigma`` is in 8-bit levels, as in Real-ESRGAN's ``noise_range`` [1, 30]."""
    h, w, c = shape
    if gray:
        field = rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma / 255.0)
        return np.repeat(field[:, :, None], c, axis=2)
    return rng.standard_normal((h, w, c), dtype=np.float32) * np.float32(sigma / 255.0)


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """img + Gaussian noise, clipped to [0, 1] (BasicSR ``clip=True, rounds=False``)."""
    return np.clip(img + generate_gaussian_noise(img.shape, sigma, gray, rng), 0.0, 1.0)


def _poisson_field(channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson(x * vals) / vals - x on the 8-bit-rounded ``channel``, vals = 2^ceil(log2 #levels)."""
    q = np.clip(np.round(channel * 255.0), 0, 255).astype(np.uint8)
    levels = int(np.count_nonzero(np.bincount(q.ravel(), minlength=256)))
    vals = float(2 ** np.ceil(np.log2(levels)))
    x = q.astype(np.float32) / np.float32(255.0)
    return (rng.poisson(x * vals).astype(np.float32) / np.float32(vals)) - x


def generate_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 Poisson (shot) noise of BasicSR ``generate_poisson_noise``, times ``scale``."""
    if gray:
        field = _poisson_field(to_gray(img), rng)
        return np.repeat(field[:, :, None], img.shape[2], axis=2) * np.float32(scale)
    return _poisson_field(img, rng) * np.float32(scale)


def add_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """img + Poisson noise, clipped to [0, 1]."""
    return np.clip(img + generate_poisson_noise(img, scale, gray, rng), 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# JPEG, sharpening, final quantisation
# ---------------------------------------------------------------------------------------


def add_jpg_compression(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG with libjpeg (OpenCV) at ``quality``; input clamped to [0, 1]."""
    u8 = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) * np.float32(1 / 255.0)


def usm_sharp(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> np.ndarray:
    """Unsharp mask with a soft mask (BasicSR ``usm_sharp``, Real-ESRGAN's ``gt_usm``).

    residual = img - G(img); mask = |residual| * 255 > threshold, blurred by the same
    Gaussian G (size ``radius`` made odd, sigma from OpenCV's rule); out =
    mask * clip(img + weight * residual) + (1 - mask) * img.
    """
    if radius % 2 == 0:
        radius += 1
    blur = cv2.GaussianBlur(img, (radius, radius), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (radius, radius), 0)
    sharp = np.clip(img + weight * residual, 0.0, 1.0)
    return soft * sharp + (1 - soft) * img


def quantize(img: np.ndarray) -> np.ndarray:
    """Round to 8-bit levels and clamp: clamp(round(255 x), 0, 255) / 255."""
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.float32) / np.float32(255.0)
