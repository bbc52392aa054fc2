"""Apply drawn degradation parameters to a batch with torch, on any device.

Used to degrade on the fly during training: :func:`degrade_batch` takes HR crops and the
records of :func:`refsr.degrade.params.sample_params` and returns LR crops. It follows
:mod:`.numpy_exec` step by step; the differences are the JPEG codec (a libjpeg-like
baseline codec written in torch: float DCT instead of libjpeg's integer DCT) and the noise
realisation (torch's generator, seeded by the recorded noise seed; pass
``noise_from_numpy=True`` to draw the very same noise as the numpy path, on the CPU).
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from .kernels import make_kernel

# JPEG Annex K base quantisation tables (luma, chroma), row-major.
_Q_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_Q_CHROMA = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 6 + [99] * 32


def _reflect_index(n: int, pad: int, device) -> "torch.Tensor":
    """Indices of a reflect-101 padded axis of length n + 2 pad (any pad, as OpenCV)."""
    import torch

    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def filter2d(x, kernel: np.ndarray):
    """Correlate (B, C, H, W) with one (k, k) kernel per call, reflect-101 borders."""
    import torch
    import torch.nn.functional as F

    k = kernel.shape[0]
    p = k // 2
    b, c, h, w = x.shape
    x = x.index_select(2, _reflect_index(h, p, x.device)).index_select(3, _reflect_index(w, p, x.device))
    weight = torch.as_tensor(kernel, dtype=x.dtype, device=x.device).expand(c, 1, k, k)
    return F.conv2d(x, weight, groups=c)


def _area_matrix(n: int, m: int, device, dtype):
    """(m, n) pixel-overlap averaging matrix of an n -> m resize (OpenCV ``INTER_AREA``)."""
    import torch

    edges_out = torch.arange(m + 1, dtype=torch.float64) * (n / m)
    lo = torch.maximum(edges_out[:-1, None], torch.arange(n, dtype=torch.float64)[None, :])
    hi = torch.minimum(edges_out[1:, None], torch.arange(1, n + 1, dtype=torch.float64)[None, :])
    overlap = (hi - lo).clamp(min=0)
    return (overlap / overlap.sum(1, keepdim=True)).to(device=device, dtype=dtype)


def resize(x, size: tuple[int, int], mode: str):
    """Resize (B, C, H, W) to ``size`` (h, w): bilinear/bicubic as ``F.interpolate`` without
    antialiasing; area as the exact overlap average (matches :func:`ops.resize`)."""
    import torch
    import torch.nn.functional as F

    h, w = int(size[0]), int(size[1])
    if (h, w) == tuple(x.shape[2:]):
        return x
    if mode == "area":
        ry = _area_matrix(x.shape[2], h, x.device, x.dtype)
        rx = _area_matrix(x.shape[3], w, x.device, x.dtype)
        return torch.matmul(torch.matmul(ry, x), rx.T)  # two matmuls: no (o, h, w) intermediate
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {ops.RESIZE_MODES}")
    return F.interpolate(x, size=(h, w), mode=mode, align_corners=False)


def _gray(x):
    import torch

    weights = torch.tensor(ops.GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _poisson_field(x, generator):
    import torch

    q = torch.clamp(torch.round(x * 255.0), 0, 255)
    levels = int(torch.count_nonzero(torch.bincount(q.flatten().long(), minlength=256)))
    vals = float(2 ** math.ceil(math.log2(levels)))
    q = q / 255.0
    return torch.poisson(q * vals, generator=generator) / vals - q


def add_noise(x, record: dict, noise_from_numpy: bool = False):
    """Add the noise of ``record`` to (1, 3, H, W) in [0, 1] and clip (see :func:`ops.add_gaussian_noise`)."""
    import torch

    if noise_from_numpy:
        img = x[0].permute(1, 2, 0).detach().cpu().numpy().astype(np.float32)
        rng = np.random.default_rng(record["seed"])
        if record["kind"] == "gaussian":
            noise = ops.generate_gaussian_noise(img.shape, record["sigma"], record["gray"], rng)
        else:
            noise = ops.generate_poisson_noise(img, record["scale"], record["gray"], rng)
        return torch.clamp(x + torch.from_numpy(noise).permute(2, 0, 1)[None].to(x), 0, 1)
    g = torch.Generator(device=x.device)
    g.manual_seed(record["seed"])
    if record["kind"] == "gaussian":
        shape = (1, 1) + tuple(x.shape[2:]) if record["gray"] else tuple(x.shape)
        noise = torch.randn(shape, generator=g, device=x.device, dtype=x.dtype) * (record["sigma"] / 255.0)
    elif record["gray"]:
        noise = _poisson_field(_gray(x), g) * record["scale"]
    else:
        noise = _poisson_field(x, g) * record["scale"]
    return torch.clamp(x + noise, 0, 1)


def _quant_table(base: list[int], quality: int, device, dtype):
    """libjpeg ``jpeg_quality_scaling`` + ``jpeg_add_quant_table`` (baseline: clamp to [1, 255])."""
    import torch

    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    table = [min(max((v * scale + 50) // 100, 1), 255) for v in base]
    return torch.tensor(table, device=device, dtype=dtype).view(8, 8)


def _dct_matrix(device, dtype):
    """8x8 orthonormal DCT-II matrix D (JPEG's FDCT of a block B is D B D^T)."""
    import torch

    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _code_plane(plane, table, d):
    """Quantise (N, H, W) (H, W multiples of 8, level-shifted) in the 8x8 DCT domain and back.
    The 2-D DCT D B D^T of every block is one (64, 64) matmul with kron(D, D)."""
    import torch

    n, h, w = plane.shape
    blocks = plane.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3).reshape(-1, 64)
    dd = torch.kron(d, d)
    coef = blocks @ dd.T
    table = table.reshape(64)
    coef = torch.round(coef / table) * table
    return (coef @ dd).reshape(n, h // 8, w // 8, 8, 8).transpose(2, 3).reshape(n, h, w)


def jpeg(x, quality: int):
    """Baseline JPEG (4:2:0, libjpeg tables) encode + decode of (1, 3, H, W) in [0, 1].

    1. Round to 8 bits, pad to 16-pixel MCUs by edge replication (libjpeg).
    2. RGB -> YCbCr (JFIF); chroma 2x2 averaged.
    3. 8x8 DCT, quantise with the quality-scaled Annex K tables, dequantise, inverse DCT.
    4. Chroma upsampled with the triangle ("fancy") filter = bilinear x2; YCbCr -> RGB, round.
    """
    import torch
    import torch.nn.functional as F

    _, _, h, w = x.shape
    px = torch.round(torch.clamp(x, 0, 1) * 255.0)
    ph, pw = -h % 16, -w % 16
    px = F.pad(px, (0, pw, 0, ph), mode="replicate") if ph or pw else px
    r, g, b = px[0, 0], px[0, 1], px[0, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    chroma = F.avg_pool2d(torch.stack([cb, cr])[None], 2)[0]
    d = _dct_matrix(x.device, x.dtype)
    y = _code_plane((y - 128)[None], _quant_table(_Q_LUMA, quality, x.device, x.dtype), d)[0] + 128
    chroma = _code_plane(chroma, _quant_table(_Q_CHROMA, quality, x.device, x.dtype), d)
    chroma = F.interpolate(chroma[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    cb, cr = chroma[0], chroma[1]
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])
    rgb = torch.clamp(torch.round(rgb), 0, 255)[:, :h, :w]
    return (rgb / 255.0)[None]


def usm_sharp(x, weight: float = 0.5, radius: int = 50, threshold: float = 10):
    """Unsharp mask with soft mask of (B, 3, H, W) in [0, 1] (BasicSR ``USMSharp``); see :func:`ops.usm_sharp`."""
    import cv2
    import torch

    if radius % 2 == 0:
        radius += 1
    g = cv2.getGaussianKernel(radius, 0)
    kernel = (g @ g.T).astype(np.float32)
    blur = filter2d(x, kernel)
    residual = x - blur
    mask = (torch.abs(residual) * 255 > threshold).to(x.dtype)
    soft = filter2d(mask, kernel)
    sharp = torch.clamp(x + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * x


def _resize_sinc(x, final: dict, lr_size):
    x = resize(x, lr_size, final["resize_mode"])
    return filter2d(x, make_kernel(final["sinc"])) if final["sinc"] else x


def realesrgan_degrade(x, params: dict, scale: int, noise_from_numpy: bool = False):
    """Real-ESRGAN's second-order degradation of one (1, 3, H, W) image in [0, 1]; see
    :func:`refsr.degrade.numpy_exec.realesrgan_degrade` (same steps, same order)."""
    import torch

    h, w = x.shape[2:]
    lr_size = (h // scale, w // scale)
    s1, s2, final = params["stage1"], params["stage2"], params["final"]
    # 1. First order: blur, resize, noise, clamp + JPEG.
    out = filter2d(x, make_kernel(s1["blur"]))
    out = resize(out, ops.stage_size(h, w, s1["resize"]["factor"]), s1["resize"]["mode"])
    out = jpeg(add_noise(out, s1["noise"], noise_from_numpy), s1["jpeg"]["quality"])
    # 2. Second order: optional blur, resize relative to HR/scale, noise.
    if s2["blur"] is not None:
        out = filter2d(out, make_kernel(s2["blur"]))
    f2 = s2["resize"]["factor"]
    out = resize(out, (max(1, int(h / scale * f2)), max(1, int(w / scale * f2))), s2["resize"]["mode"])
    out = add_noise(out, s2["noise"], noise_from_numpy)
    # 3. Final: [resize + sinc] then JPEG, or the reverse; round and clamp.
    if final["order"] == "resize_sinc_jpeg":
        out = jpeg(_resize_sinc(out, final, lr_size), final["jpeg"]["quality"])
    else:
        out = _resize_sinc(jpeg(out, final["jpeg"]["quality"]), final, lr_size)
    return torch.clamp(torch.round(out * 255.0), 0, 255) / 255.0


def degrade_batch(hr, params: list[dict], scale: int, noise_from_numpy: bool = False, return_hr: bool = False):
    """Degrade a batch of HR crops with one parameter record each.

    Args:
        hr: (B, 3, H, W) float tensor in [0, 1] on any device; H, W multiples of ``scale``.
        params: B records of :func:`refsr.degrade.params.sample_params`.
        scale: SR factor.
        noise_from_numpy: draw noise exactly as the numpy executor (CPU round trip).
        return_hr: also return the HR targets (unsharp-masked when the records say ``usm``).

    Returns:
        lr: (B, 3, H / scale, W / scale) in [0, 1], same device and dtype as ``hr``
        (and ``hr_target`` (B, 3, H, W) if ``return_hr``).
    """
    import torch

    if hr.ndim != 4 or hr.shape[1] != 3 or len(params) != hr.shape[0]:
        raise ValueError(f"expected (B, 3, H, W) with B = len(params) = {len(params)}, got {tuple(hr.shape)}")
    if hr.shape[2] % scale or hr.shape[3] % scale:
        raise ValueError(f"HR size {hr.shape[3]}x{hr.shape[2]} is not a multiple of scale {scale}")
    targets, lrs = [], []
    for i, p in enumerate(params):
        x = hr[i : i + 1]
        if p.get("usm"):
            x = usm_sharp(x, p["usm"]["weight"], p["usm"]["radius"], p["usm"]["threshold"])
        targets.append(x)
        if p["kind"] == "bicubic":
            lrs.append(_matlab_bicubic(x, scale))
        else:
            lrs.append(realesrgan_degrade(x, p, scale, noise_from_numpy))
    lr = torch.cat(lrs)
    return (lr, torch.cat(targets)) if return_hr else lr


def _matlab_bicubic(x, scale: int):
    """MATLAB-style antialiased bicubic downscale of (1, 3, H, W), rounded to 8 bits."""
    import torch

    h, w = x.shape[2:]
    ry = torch.from_numpy(ops.matlab_bicubic_weights(h, h // scale)).to(x)
    rx = torch.from_numpy(ops.matlab_bicubic_weights(w, w // scale)).to(x)
    out = torch.matmul(torch.matmul(ry, x), rx.T)
    return torch.clamp(torch.round(out * 255.0), 0, 255) / 255.0
