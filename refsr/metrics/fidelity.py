"""PSNR and SSIM with the conventions of BasicSR, as batched, vectorised torch.

The super-resolution literature (and BasicSR's ``basicsr/metrics/psnr_ssim.py``, the
reference most papers copy) computes fidelity metrics like this:

1. pixels are 8-bit values (the saved PNG), on a 0-255 scale;
2. ``crop_border`` pixels are removed on each side (usually the scale factor);
3. with ``color='y'``, only the luma channel of ITU-R BT.601 as MATLAB's ``rgb2ycbcr``
   computes it: Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1], so
   Y in [16, 235] (not rounded);
4. PSNR = 10 log10(255^2 / MSE), infinite for identical images;
5. SSIM (Wang et al. 2004, Eq. 13) with an 11x11 Gaussian window of sigma 1.5, constants
   C1 = (0.01 * 255)^2 and C2 = (0.03 * 255)^2, statistics over 'valid' windows only (no
   padding), averaged over the map; for RGB, the mean of the three channels' SSIM.

Every function here takes (B, 3, H, W) float tensors in [0, 1] (the range of
:func:`refsr.io.read_rgb`) and returns one value per image, shape (B,), float64.
"""

from __future__ import annotations

import math

COLORS = ("y", "rgb")

# MATLAB rgb2ycbcr, Y row, for R, G, B in [0, 1] giving Y on the 0-255 scale (ITU-R BT.601).
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0
# The Cb and Cr rows (offset 128), for the ``luma`` colour fix of refsr.sample.
BT601_CBCR_WEIGHTS = ((-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PEAK = 255.0


def _check_pair(pred, gt) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(pred.shape)}")
    if pred.shape != gt.shape:
        raise ValueError(f"image shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")


def _check_color(color: str) -> None:
    if color not in COLORS:
        raise ValueError(f"color must be one of {', '.join(COLORS)}; got {color!r}")


def quantize_8bit(images, dtype=None):
    """Round (B, 3, H, W) pixels in [0, 1] to 8-bit values, returned on the 0-255 scale.

    Returns a float tensor (``dtype``, default float64) holding integers in [0, 255],
    the values a PNG file stores.
    """
    import torch

    x = images.to(dtype or torch.float64, copy=True)
    return x.clamp_(0.0, 1.0).mul_(PEAK).round_()


def rgb_to_y(images255):
    """BT.601 luma of (B, 3, H, W) RGB on the 0-255 scale, as MATLAB ``rgb2ycbcr``.

    Returns (B, 1, H, W) in [16, 235], same dtype, not rounded (as BasicSR's
    ``to_y_channel``).
    """
    wr, wg, wb = (w / PEAK for w in BT601_Y_WEIGHTS)
    y = images255[:, 0:1] * wr
    y.add_(images255[:, 1:2], alpha=wg).add_(images255[:, 2:3], alpha=wb)
    return y.add_(BT601_Y_OFFSET)


def crop_border(images, border: int):
    """Drop ``border`` pixels on each side of (B, C, H, W) images."""
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return images
    h, w = images.shape[-2:]
    if 2 * border >= min(h, w):
        raise ValueError(f"crop border {border} leaves nothing of a {w}x{h} image")
    return images[..., border:-border, border:-border]


def prepare(images, border: int = 0, color: str = "y", quantize: bool = True, dtype=None):
    """The array PSNR and SSIM see: 8-bit rounded, cropped, Y or RGB, on the 0-255 scale.

    Args:
        images (`torch.Tensor`): (B, 3, H, W) float in [0, 1].
        border (`int`, defaults to 0): pixels removed on each side.
        color (`str`, defaults to ``"y"``): ``"y"`` (BT.601 luma) or ``"rgb"``.
        quantize (`bool`, defaults to True): round to 8-bit values first.
        dtype (`torch.dtype`, defaults to float64): float32 is faster, with SSIM about
            2e-6 away from float64 on photos.

    Returns:
        (B, 1 or 3, H - 2 border, W - 2 border) ``dtype`` on the 0-255 scale.
    """
    import torch

    _check_color(color)
    dtype = dtype or torch.float64
    x = crop_border(images, border)  # a view: crop before converting
    x = quantize_8bit(x, dtype) if quantize else x.to(dtype) * PEAK
    return rgb_to_y(x) if color == "y" else x


def psnr(pred, gt, border: int = 0, color: str = "y", quantize: bool = True):
    """Peak signal-to-noise ratio per image, in dB (``inf`` for identical images).

    Args:
        pred, gt (`torch.Tensor`): (B, 3, H, W) float in [0, 1].
        border, color, quantize: see :func:`prepare`.

    Returns:
        (B,) float64: 10 log10(255^2 / MSE).
    """
    _check_pair(pred, gt)
    return _psnr_prepared(prepare(pred, border, color, quantize), prepare(gt, border, color, quantize))


def _psnr_prepared(x, y):
    """PSNR (B,) of prepared (B, C, H, W) arrays on the 0-255 scale; MSE 0 gives +inf."""
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * (math.log10(PEAK**2) - mse.log10())


def gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=None, device=None):
    """Normalised 1-D Gaussian of ``size`` taps (as OpenCV's ``getGaussianKernel``), shape (size,)."""
    import torch

    coords = torch.arange(size, dtype=dtype or torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _gaussian_filter_valid(maps, kernel):
    """Separable 'valid' Gaussian filtering of (N, C, H, W) maps with a 1-D ``kernel``.

    Each 1-D pass is k shifted, weighted, in-place additions over the whole batch: the
    same sums as a 2-D 'valid' convolution with the outer-product window, in about
    2k instead of k^2 multiply-adds per pixel, and memory-bound rather than im2col-bound.
    """
    taps = kernel.tolist()
    n = len(taps)
    h = maps.shape[-2] - n + 1
    rows = maps[..., 0:h, :] * taps[0]
    for i in range(1, n):  # along H
        rows.add_(maps[..., i:i + h, :], alpha=taps[i])
    w = maps.shape[-1] - n + 1
    out = rows[..., 0:w] * taps[0]
    for i in range(1, n):  # along W
        out.add_(rows[..., i:i + w], alpha=taps[i])
    return out


def ssim_prepared(x, y):
    """SSIM per image of arrays already prepared by :func:`prepare` (0-255 scale).

    Args:
        x, y (`torch.Tensor`): (B, C, H, W) float (float64, or float32 for speed: about
            2e-6 from float64 on photos), H and W at least 11.

    Returns:
        (B,) float: the mean of the SSIM map over valid windows and channels.
    """
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} after cropping; got {tuple(x.shape[-2:])}")
    import torch

    c = x.shape[1]
    kernel = gaussian_kernel_1d(dtype=x.dtype, device=x.device)
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    # 1. Centre both images on mid-grey: (co)variances do not change, and the second
    #    moments stay small, which keeps float32 round-off low.
    x, y = x - 128.0, y - 128.0
    # 2. Local means and second moments in one batched filtering (Wang et al. 2004, Eq. 14-16).
    stats = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y, xx, yy, xy = stats.split(c, dim=1)
    # 3. Variances and covariance (population form, as BasicSR and MATLAB).
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    mu_x, mu_y = mu_x + 128.0, mu_y + 128.0
    # 4. SSIM map (Eq. 13) and its mean over positions and channels.
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3))


def ssim(pred, gt, border: int = 0, color: str = "y", quantize: bool = True):
    """Structural similarity per image with BasicSR's conventions.

    Args:
        pred, gt (`torch.Tensor`): (B, 3, H, W) float in [0, 1].
        border, color, quantize: see :func:`prepare`.

    Returns:
        (B,) float64 in [-1, 1]; 1 for identical images.
    """
    _check_pair(pred, gt)
    return ssim_prepared(prepare(pred, border, color, quantize), prepare(gt, border, color, quantize))


def psnr_ssim(pred, gt, border: int = 0, color: str = "y", quantize: bool = True, dtype=None):
    """Both metrics from one preparation of the images: ((B,) PSNR in dB, (B,) SSIM).

    See :func:`prepare` for the arguments; ``dtype`` defaults to float64 (as BasicSR).
    """
    _check_pair(pred, gt)
    x, y = prepare(pred, border, color, quantize, dtype), prepare(gt, border, color, quantize, dtype)
    return _psnr_prepared(x, y), ssim_prepared(x, y)
