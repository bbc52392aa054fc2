"""NIQE, the no-reference Natural Image Quality Evaluator, as batched torch.

Mittal, Soundararajan & Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE SPL 2013. Lower is better. The conventions are those of BasicSR's
``basicsr.metrics.niqe.calculate_niqe(img, crop_border, input_order='HWC',
convert_to='y')`` (1.4.2), which reproduces the authors' MATLAB release:

1. 8-bit values (0-255), ``border`` pixels removed on each side, the Y channel of
   ITU-R BT.601 as MATLAB ``rgb2ycbcr`` rounded to integers (a one-channel image is used
   as it is, as BasicSR does with a gray file read by ``cv2.IMREAD_UNCHANGED``);
2. the top-left part that holds a whole number of 96x96 blocks is kept;
3. two scales: the image, then half of it by MATLAB ``imresize`` (bicubic, antialiased);
4. at each scale, MSCN coefficients (Eq. 1) with the 7x7 Gaussian window of the pristine
   model, borders replicated;
5. per block (96x96, then 48x48 at half scale), 18 features: the AGGD fit (Eq. 7,
   moment matching on the grid 0.2:0.001:10) of the coefficients (alpha, mean of the two
   betas) and of their products with the neighbour in 4 directions, circularly shifted
   within the block (alpha, the mean of Eq. 8, beta_l, beta_r);
6. a Gaussian fitted to the 36-d block features (mean ignoring NaN, covariance of the
   blocks without NaN), compared with the pristine one (Eq. 10):
   sqrt((mu_p - mu)^T pinv((S_p + S) / 2) (mu_p - mu)).

Precision: BasicSR casts the image to float32, and scipy's ``convolve`` and its
``imresize`` return float32, so its local variance E[x^2] - mu^2 is a float32 difference
of two numbers near 255^2 that cancels in flat areas. That rounding is part of the
published numbers: exact float64 differs from BasicSR by up to 0.06 on skimage's
astronaut. Here sums and products are float64, and values are rounded to float32 exactly
where BasicSR stores float32 arrays (steps 3 and 4); the results agree with BasicSR within
1e-3 (``tests/test_niqe.py``), the rest being BasicSR's own float32 summation order.
The pristine parameters are ``data/niqe_pris_params.npz`` (BasicSR 1.4.2, Apache-2.0,
see ``data/NOTICE``).
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np

BLOCK = 96
MIN_BLOCKS = 2  # the covariance of the block features needs at least two blocks
PARAMS_FILE = Path(__file__).resolve().parent / "data" / "niqe_pris_params.npz"
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, the two diagonals


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def pristine_params() -> dict[str, np.ndarray]:
    """The pristine model, float64: ``mu`` (36,), ``cov`` (36, 36), ``window`` (7, 7) and
    ``kernel`` (7,), the 1-d factor of the (separable, Gaussian) window."""
    with np.load(PARAMS_FILE) as z:
        p = {"mu": z["mu_pris_param"].reshape(-1).astype(np.float64),
             "cov": z["cov_pris_param"].astype(np.float64), "window": z["gaussian_window"].astype(np.float64)}
    p["kernel"] = p["window"].sum(axis=1) / math.sqrt(p["window"].sum())
    if not np.allclose(np.outer(p["kernel"], p["kernel"]), p["window"], rtol=0, atol=1e-15):
        raise RuntimeError(f"{PARAMS_FILE}: the window is not separable (damaged file?)")
    return p


@functools.lru_cache(maxsize=1)
def params_record() -> dict[str, str]:
    """What a report stores about the parameter file: name, sha256 and provenance."""
    return {"file": f"refsr/metrics/data/{PARAMS_FILE.name}", "sha256": hashlib.sha256(PARAMS_FILE.read_bytes()).hexdigest(),
            "source": "BasicSR 1.4.2 basicsr/metrics/niqe_pris_params.npz (Apache-2.0), from the authors' MATLAB release"}


@functools.lru_cache(maxsize=1)
def _aggd_tables() -> tuple[np.ndarray, ...]:
    """The AGGD shape grid and, per grid value a: r(a) = G(2/a)^2 / (G(1/a) G(3/a)),
    sqrt(G(1/a) / G(3/a)) (beta from the standard deviation) and G(2/a) / G(1/a) (Eq. 8)."""
    alpha = np.arange(0.2, 10.001, 0.001)  # as BasicSR and MATLAB: 9801 values
    g1, g2, g3 = (np.array([math.gamma(k / a) for a in alpha]) for k in (1, 2, 3))
    ratio = g2**2 / (g1 * g3)
    if not np.all(np.diff(ratio) > 0):  # nearest-neighbour search below relies on it
        raise RuntimeError("AGGD ratio grid is not increasing")
    return alpha, ratio, np.sqrt(g1 / g3), g2 / g1


def size_problem(height: int, width: int, border: int = 0) -> str | None:
    """Why an image of ``height`` x ``width`` cannot get a NIQE with ``border``, or None."""
    h, w = height - 2 * border, width - 2 * border
    if h > 0 and w > 0 and (h // BLOCK) * (w // BLOCK) >= MIN_BLOCKS:
        return None
    return (f"NIQE needs at least {MIN_BLOCKS} blocks of {BLOCK}x{BLOCK} pixels (e.g. {MIN_BLOCKS * BLOCK}x{BLOCK}) "
            f"after removing the crop border of {border} px on each side; the image is {width}x{height} "
            f"({max(w, 0)}x{max(h, 0)} after the crop)")


# ---------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------


def prepare(images, border: int = 0):
    """Steps 1-2: (B, 3, H, W) RGB or (B, 1, H, W) gray, float in [0, 1] -> (B, h, w)
    float64 integers in [0, 255] (Y of RGB, rounded), h and w multiples of 96."""
    from . import fidelity

    x = fidelity.quantize_8bit(fidelity.crop_border(images, border))
    if x.shape[1] == 3:
        x = fidelity.rgb_to_y(x)
    h, w = (s // BLOCK * BLOCK for s in x.shape[-2:])
    return x[:, 0, :h, :w].round()


def _blur(x, kernel):
    """Separable convolution of (B, H, W) float64 with the 1-d ``kernel`` (k,) in both
    directions, borders replicated (scipy ``convolve(mode='nearest')``)."""
    import torch.nn.functional as F

    r, (h, w) = len(kernel) // 2, x.shape[-2:]
    k = kernel.flip(0).tolist()  # a convolution, not a correlation
    p = F.pad(x[:, None], (r,) * 4, mode="replicate")[:, 0]
    rows = sum(k[i] * p[:, i:i + h, :] for i in range(len(k)))
    return sum(k[j] * rows[:, :, j:j + w] for j in range(len(k)))


def mscn(x, kernel):
    """Step 4, Eq. 1: (x - mu) / (sigma + 1) of (B, H, W) float64, local mean and
    deviation with the separable window ``kernel`` (k,) (outer(kernel, kernel) is the 7x7
    window); float64 sums, rounded to float32 where BasicSR holds float32 arrays (the image,
    mu, E[x^2] and every result: its float32 E[x^2] - mu^2 cancels in flat areas)."""
    import torch

    x32 = x.float()
    mu = _blur(x.double(), kernel).float()
    sigma = (_blur((x32 * x32).double(), kernel).float() - mu * mu).abs().sqrt()
    return ((x32 - mu) / (sigma + 1)).to(torch.float64)


def _nearest(values, grid):
    """Index of the grid value (increasing (N,)) closest to each of ``values``; 0 where a
    value is not finite (as ``numpy.argmin`` over NaN)."""
    import torch

    i = torch.searchsorted(grid, values.contiguous()).clamp_(1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    i = torch.where((hi - values) ** 2 < (lo - values) ** 2, i, i - 1)  # ties go to the lower index
    return torch.where(torch.isfinite(values), i, torch.zeros_like(i))


def aggd(x):
    """Step 5, Eq. 7: AGGD fit of each row of (..., N) -> alpha, beta_l, beta_r and the
    mean of Eq. 8, each (...). Rows without negative or positive values give NaN betas."""
    import torch

    tables = [torch.from_numpy(t).to(x.device) for t in _aggd_tables()]
    x2 = x * x
    neg, pos = x < 0, x > 0
    left = ((x2 * neg).sum(-1) / neg.sum(-1)).sqrt()
    right = ((x2 * pos).sum(-1) / pos.sum(-1)).sqrt()
    g = left / right
    r = x.abs().mean(-1) ** 2 / x2.mean(-1)
    r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    idx = _nearest(r_norm, tables[1])
    beta_l, beta_r = left * tables[2][idx], right * tables[2][idx]
    return tables[0][idx], beta_l, beta_r, (beta_r - beta_l) * tables[3][idx]


def block_features(coeffs, size: int):
    """Step 5: (B, H, W) MSCN coefficients -> (B, blocks, 18) features of ``size`` blocks
    (blocks in row-major order)."""
    import torch

    b, h, w = coeffs.shape
    blocks = coeffs.reshape(b, h // size, size, w // size, size).transpose(2, 3).reshape(b, -1, size, size)
    alpha, beta_l, beta_r, _ = aggd(blocks.flatten(-2))
    feats = [alpha, (beta_l + beta_r) / 2]
    pairs = torch.stack([blocks * blocks.roll(s, dims=(-2, -1)) for s in SHIFTS])  # (4, B, n, size, size)
    alpha, beta_l, beta_r, mean = aggd(pairs.flatten(-2))
    for k in range(len(SHIFTS)):
        feats += [alpha[k], mean[k], beta_l[k], beta_r[k]]
    return torch.stack(feats, dim=-1)


def half_size(x):
    """Step 3: (B, H, W) float64 on the 0-255 scale -> (B, H/2, W/2) float64, MATLAB
    ``imresize(x / 255, 0.5) * 255`` (bicubic, antialiased, the weights of
    :func:`refsr.degrade.ops.matlab_bicubic_weights`, exact for a factor 1/2), rounded to
    float32 before and after as in BasicSR."""
    import torch

    from ..degrade.ops import matlab_bicubic_weights

    h, w = x.shape[-2:]
    ry = torch.from_numpy(matlab_bicubic_weights(h, h // 2)).to(x)
    rx = torch.from_numpy(matlab_bicubic_weights(w, w // 2)).to(x)
    small = ry @ (x.float() / 255).double() @ rx.T
    return (small.float() * 255).double()


def mvg_distance(feats, mu_p, cov_p):
    """Step 6, Eq. 10: (B, blocks, D) features against the pristine Gaussian -> (B,);
    NaN where fewer than 2 blocks are free of NaN."""
    import torch

    mu = torch.nanmean(feats, dim=1)
    valid = ~feats.isnan().any(-1)  # (B, n)
    n = valid.sum(1)
    clean = torch.where(valid[..., None], feats, torch.zeros_like(feats))
    centred = (clean - clean.sum(1, keepdim=True) / n.clamp(min=1)[:, None, None]) * valid[..., None]
    cov = centred.transpose(1, 2) @ centred / (n - 1).clamp(min=1)[:, None, None]
    diff = (mu_p - mu).nan_to_num(nan=0.0)
    quality = torch.einsum("bi,bij,bj->b", diff, torch.linalg.pinv((cov_p + cov) / 2), diff).sqrt()
    return torch.where((n >= MIN_BLOCKS) & ~mu.isnan().any(-1), quality, torch.full_like(quality, math.nan))


def niqe(images, border: int = 0):
    """NIQE of each image (lower is better), BasicSR's conventions (see the module docstring).

    Args:
        images (`torch.Tensor`): (B, 3, H, W) RGB (scored on its BT.601 Y channel) or
            (B, 1, H, W) gray, float in [0, 1], on any device with float64.
        border (`int`, defaults to 0): pixels removed on each side first.

    Returns:
        (B,) float64 on the images' device; NaN for an image with fewer than 2 textured
        blocks (e.g. a flat image).

    Raises:
        ValueError: not (B, 1 or 3, H, W), or too small (see :func:`size_problem`).
    """
    import torch

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 3, H, W) RGB or (B, 1, H, W) gray images, got shape {tuple(images.shape)}")
    problem = size_problem(images.shape[-2], images.shape[-1], border)
    if problem:
        raise ValueError(problem)
    p = {k: torch.from_numpy(v).to(images.device) for k, v in pristine_params().items()}
    x = prepare(images, border)
    feats = []
    for scale in (1, 2):
        feats.append(block_features(mscn(x, p["kernel"]), BLOCK // scale))
        if scale == 1:
            x = half_size(x)
    return mvg_distance(torch.cat(feats, dim=-1), p["mu"], p["cov"])
