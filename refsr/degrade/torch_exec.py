"""Apply drawn degradation parameters to a batch with torch, on any device.

Used to degrade on the fly during training: :func:`degrade_batch` takes HR crops and the
records of :func:`refsr.degrade.params.sample_params` and returns LR crops. It follows
:mod:`.numpy_exec` step by step; the differences are the JPEG codec (a libjpeg-like
baseline codec written in torch: float DCT instead of libjpeg's integer DCT) and the noise
realisation (torch's generator, seeded by the recorded noise seed; pass
``noise_from_numpy=True`` to draw the very same noise as the numpy path, on the CPU).

Batching. The batch goes through each step together; nothing is read back to the host
(per-sample values reach the device through pinned, non-blocking copies, the Poisson level
count stays on the device) and no host work grows with the image size.

* Kernels are built on the device from the records (:func:`make_kernels`, the torch twin
  of :func:`.kernels.make_kernel`); images whose kernels have the same size share one
  depthwise convolution (:func:`blur`: a few sizes, e.g. 7, 9, ..., 21).
* Real-ESRGAN draws a resize factor per image, so between the first and the final resize
  the images have different sizes. They share a canvas of the largest size, image ``i`` in
  its top-left ``sizes[i]`` corner (what lies outside is never read). Every step respects
  each image's own border (reflect-101 or edge-replicate indices per image); noise, clamp
  and JPEG (qualities as a (B, 64) table) run on the whole canvas at once.
* Resizing: images grouped by (input size, output size, mode), one ``F.interpolate`` (or
  area matmul) per group (:func:`resize_ragged`). With continuous factors nearly every group
  is one image, so this and the noise draws (one ``randn``/``poisson`` per image from its
  recorded seed) are the per-image calls left; each is the very computation of the image
  alone, so a record's result does not depend on the batch it is in.
* On the CPU the batch is first split into ``CPU_SIZE_GROUPS`` groups of similar
  first-resize size, so the shared canvases waste little; on a GPU it stays whole.
"""

from __future__ import annotations

import math

import numpy as np

from . import ops

# JPEG Annex K base quantisation tables (luma, chroma), row-major.
_Q_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_Q_CHROMA = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 6 + [99] * 32


CPU_SIZE_GROUPS = 4  # see _size_groups


def _tensor(data, device, dtype=None):
    """``data`` (list, array or tensor) as a tensor on ``device``. Host data goes through pinned
    memory and a non-blocking copy, so the host never waits for the device's queue to drain."""
    import torch

    t = torch.as_tensor(data, dtype=dtype)
    device = torch.device(device if device is not None else "cpu")
    if t.device == device or (device.type == t.device.type and device.index is None):
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _reflect_index(n: int, pad: int, device) -> "torch.Tensor":
    """Indices of a reflect-101 padded axis of length n + 2 pad (any pad, as OpenCV)."""
    import torch

    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def _reflect_indices(lengths, total: int, pad: int, device) -> "torch.Tensor":
    """(B, total + 2 pad) reflect-101 indices of an axis padded by ``pad``, image i of length lengths[i]."""
    import torch

    idx = torch.arange(-pad, total + pad, device=device)[None]
    n = _tensor(lengths, device)[:, None]
    period = (2 * (n - 1)).clamp(min=1)
    idx = torch.remainder(idx, period)
    return torch.where(n == 1, 0, torch.where(idx >= n, period - idx, idx))


def _replicate_indices(lengths, total: int, device) -> "torch.Tensor":
    """(B, total) indices 0..total-1 clamped to each image's last pixel (edge replication)."""
    import torch

    return torch.minimum(torch.arange(total, device=device)[None], _tensor(lengths, device)[:, None] - 1)


def _gather(x, rows, cols):
    """(B, C, H, W), rows (B, H'), cols (B, W') -> (B, C, H', W'): image b's rows[b] x cols[b]."""
    b, c = x.shape[:2]
    x = x.gather(2, rows[:, None, :, None].expand(b, c, rows.shape[1], x.shape[3]))
    return x.gather(3, cols[:, None, None, :].expand(b, c, x.shape[2], cols.shape[1]))


def _index(idx: list[int], device):
    import torch

    return _tensor(idx, device, torch.long)


# ----------------------------------------------------------------------------- blur


def make_kernels(specs: list, device=None, dtype=None) -> "torch.Tensor":
    """The (B, k, k) kernels of B blur records, built on ``device``: the torch twin of
    :func:`refsr.degrade.kernels.make_kernel` (same formulas in float64, normalised, cast
    to ``dtype``, float32 by default). Each is zero-padded around its centre to the largest
    size ``k``; a record ``None`` gives the identity (a centred 1)."""
    import torch

    f64 = dict(dtype=torch.float64, device=device)
    size = max([int(s["size"]) for s in specs if s] + [1])
    ax = torch.arange(size, **f64) - size // 2
    y, x = ax[:, None], ax[None, :]  # x along columns, as numpy's meshgrid
    col = lambda key, default=0.0: _tensor([(s or {}).get(key) or default for s in specs], device, torch.float64)[:, None, None]  # noqa: E731
    kind = [(s or {"type": "none"})["type"] for s in specs]
    is_ = lambda pred: _tensor([pred(k) for k in kind], device)[:, None, None]  # noqa: E731
    # Gaussian family: d = x^T Sigma^-1 x with Sigma = R diag(sx^2, sy^2) R^T (kernels.sigma_matrix2)
    cos, sin = torch.cos(col("theta")), torch.sin(col("theta"))
    ix, iy = 1 / col("sigma_x", 1.0) ** 2, 1 / col("sigma_y", 1.0) ** 2
    d = (cos**2 * ix + sin**2 * iy) * x**2 + 2 * cos * sin * (ix - iy) * x * y + (sin**2 * ix + cos**2 * iy) * y**2
    beta = col("beta", 1.0)
    gauss = torch.exp(-0.5 * torch.where(is_(lambda k: k.startswith("generalized")), d**beta, d))
    plateau = 1.0 / (d**beta + 1.0)
    # circular low-pass: cutoff J1(cutoff r) / (2 pi r), cutoff^2 / (4 pi) at r = 0 (kernels.circular_lowpass_kernel)
    r, cut = torch.sqrt(x**2 + y**2), col("cutoff", 1.0)
    sinc = torch.where(r == 0, cut**2 / (4 * math.pi), cut * torch.special.bessel_j1(cut * r) / (2 * math.pi * r))
    kernel = torch.where(is_(lambda k: k == "sinc"), sinc, torch.where(is_(lambda k: k.startswith("plateau")), plateau, gauss))
    kernel = torch.where(is_(lambda k: k == "none"), ((x == 0) & (y == 0)).to(kernel.dtype), kernel)
    half = _tensor([int((s or {"size": 1})["size"]) // 2 for s in specs], device)[:, None, None]
    kernel = kernel * ((x.abs() <= half) & (y.abs() <= half))
    return (kernel / kernel.sum(dim=(1, 2), keepdim=True)).to(dtype or torch.float32)


def filter2d(x, kernel, sizes: list | None = None):
    """Correlate (B, C, H, W) with reflect-101 borders (one depthwise convolution).

    Args:
        kernel: one (k, k) kernel (array or tensor) for every image, or a (B, k, k) tensor,
            one per image.
        sizes: the valid (h, w) of each image in the canvas (its top-left corner); each is
            reflected at its own border. None: every image fills the canvas.
    """
    import torch
    import torch.nn.functional as F

    weight = _tensor(kernel, x.device, x.dtype)
    k = weight.shape[-1]
    p = k // 2
    b, c, h, w = x.shape
    if sizes is None:
        x = x.index_select(2, _reflect_index(h, p, x.device)).index_select(3, _reflect_index(w, p, x.device))
    else:
        rows = _reflect_indices([s[0] for s in sizes], h, p, x.device)
        x = _gather(x, rows, _reflect_indices([s[1] for s in sizes], w, p, x.device))
    if weight.dim() == 2:
        return F.conv2d(x, weight.expand(c, 1, k, k), groups=c)
    weight = weight.repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(x.reshape(1, b * c, h + 2 * p, w + 2 * p), weight, groups=b * c).reshape(b, c, h, w)


def blur(x, specs: list, sizes: list | None = None):
    """Blur image i of a canvas (B, C, H, W), valid in its top-left ``sizes[i]`` (None: the
    whole canvas), with the kernel of record ``specs[i]`` (None: left as it is). Images whose
    kernels have the same size go through one convolution, on the canvas cut to the largest of them."""
    b, _, h, w = x.shape
    sizes = sizes or [(h, w)] * b
    out = x.clone()
    for k in sorted({int(s["size"]) for s in specs if s}):
        idx = [i for i, s in enumerate(specs) if s and int(s["size"]) == k]
        hg, wg = max(sizes[i][0] for i in idx), max(sizes[i][1] for i in idx)
        rows = _index(idx, x.device)
        sub = x[rows, :, :hg, :wg]
        out[rows, :, :hg, :wg] = filter2d(sub, make_kernels([specs[i] for i in idx], x.device, x.dtype), [sizes[i] for i in idx])
    return out


# ----------------------------------------------------------------------------- resize


def _area_matrix(n: int, m: int, device, dtype):
    """(m, n) pixel-overlap averaging matrix of an n -> m resize (OpenCV ``INTER_AREA``)."""
    import torch

    f64 = dict(dtype=torch.float64, device=device)  # built where it is used: no host copy
    edges_out = torch.arange(m + 1, **f64) * (n / m)
    lo = torch.maximum(edges_out[:-1, None], torch.arange(n, **f64)[None, :])
    hi = torch.minimum(edges_out[1:, None], torch.arange(1, n + 1, **f64)[None, :])
    overlap = (hi - lo).clamp(min=0)
    return (overlap / overlap.sum(1, keepdim=True)).to(dtype=dtype)


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


def resize_ragged(x, sizes: list, out_sizes: list, modes: list):
    """Resize image i of a canvas (B, C, H, W), valid in its top-left ``sizes[i]``, to
    ``out_sizes[i]`` with ``modes[i]``. Images with the same input size, output size and mode
    share one :func:`resize` call (with Real-ESRGAN's continuous factors that is mostly one
    call per image: no host round trip, the work is in each call, and each result is the
    very one of the image alone). Returns a canvas (B, C, max h', max w'), zero outside each image."""
    groups: dict = {}
    for i, key in enumerate(zip(sizes, out_sizes, modes)):
        groups.setdefault(key, []).append(i)
    out = x.new_zeros(x.shape[0], x.shape[1], max(s[0] for s in out_sizes), max(s[1] for s in out_sizes))
    for ((h, w), (ho, wo), mode), idx in groups.items():
        rows = _index(idx, x.device) if len(idx) < x.shape[0] else slice(None)
        out[rows, :, :ho, :wo] = resize(x[rows, :, :h, :w], (ho, wo), mode)
    return out


# ----------------------------------------------------------------------------- noise


def _gray(x):
    import torch

    weights = _tensor(ops.GRAY_WEIGHTS, x.device, x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _valid(sizes: list, h: int, w: int, device):
    """(B, 1, H, W) bool: inside image i's top-left ``sizes[i]``."""
    import torch

    s = _tensor(sizes, device)
    rows = torch.arange(h, device=device)[None, :, None] < s[:, 0, None, None]
    return (rows & (torch.arange(w, device=device)[None, None, :] < s[:, 1, None, None]))[:, None]


def _poisson_levels(q, sizes: list):
    """(B,) number of distinct 8-bit levels in each image's valid part of q (B, C, H, W) in 0..255, on the device."""
    import torch

    b = q.shape[0]
    key = q.long() + 256 * torch.arange(b, device=q.device).view(b, 1, 1, 1)
    key = torch.where(_valid(sizes, q.shape[2], q.shape[3], q.device), key, 256 * b).flatten()  # padding: a spare bin
    counts = torch.zeros(256 * b + 1, dtype=torch.long, device=q.device).index_add_(0, key, torch.ones_like(key))
    return (counts[: 256 * b].view(b, 256) > 0).sum(1)


def _draw(record: dict, shape, device, dtype, lam=None):
    """One image's noise draw from its recorded seed: standard normal of ``shape`` or Poisson(lam)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(record["seed"])
    if lam is None:
        return torch.randn(shape, generator=g, device=device, dtype=dtype)
    return torch.poisson(lam, generator=g)


def _poisson_noise(x, records: list, sizes: list, idx: list, noise) -> None:
    """Write the Poisson fields (before scaling) of images ``idx`` into ``noise`` (see :func:`ops.generate_poisson_noise`)."""
    import torch

    for gray in (False, True):
        sub = [i for i in idx if bool(records[i]["gray"]) == gray]
        if not sub:
            continue
        src = x[_index(sub, x.device)]
        src = _gray(src) if gray else src
        q = torch.clamp(torch.round(src * 255.0), 0, 255)
        vals = torch.exp2(torch.ceil(torch.log2(_poisson_levels(q, [sizes[i] for i in sub]).double()))).to(x.dtype)
        q = q / 255.0
        for j, i in enumerate(sub):  # one draw per image, from its seed
            h, w = sizes[i]
            qi = q[j : j + 1, :, :h, :w].contiguous()
            noise[i, :, :h, :w] = (_draw(records[i], None, x.device, x.dtype, qi * vals[j]) / vals[j] - qi)[0]


def add_noise(x, records: list, sizes: list | None = None, noise_from_numpy: bool = False):
    """Add each image's noise record to (B, 3, H, W) in [0, 1] and clip (see :func:`ops.add_gaussian_noise`).

    ``sizes``: the valid (h, w) of each image (top-left corner); None: the whole canvas.
    ``noise_from_numpy``: draw as the numpy executor does (per image, on the CPU).
    """
    import torch

    b, _, h, w = x.shape
    sizes = sizes or [(h, w)] * b
    noise = torch.zeros_like(x)
    if noise_from_numpy:
        for i, (rec, (hi, wi)) in enumerate(zip(records, sizes)):
            noise[i, :, :hi, :wi] = _numpy_noise(x[i, :, :hi, :wi], rec)
        return torch.clamp(x + noise, 0, 1)
    for i, rec in enumerate(records):  # Gaussian: the draw does not depend on the image
        if rec["kind"] == "gaussian":
            hi, wi = sizes[i]
            noise[i, :, :hi, :wi] = _draw(rec, (1, 1 if rec["gray"] else 3, hi, wi), x.device, x.dtype)[0]
    _poisson_noise(x, records, sizes, [i for i, r in enumerate(records) if r["kind"] != "gaussian"], noise)
    amp = [r["sigma"] / 255.0 if r["kind"] == "gaussian" else r["scale"] for r in records]
    return torch.clamp(x + noise * _tensor(amp, x.device, x.dtype).view(b, 1, 1, 1), 0, 1)


def _numpy_noise(img, record: dict):
    """(3, h, w) noise of ``record`` drawn by the numpy executor's functions (CPU round trip)."""
    import torch

    arr = img.permute(1, 2, 0).detach().cpu().numpy().astype(np.float32)
    rng = np.random.default_rng(record["seed"])
    if record["kind"] == "gaussian":
        noise = ops.generate_gaussian_noise(arr.shape, record["sigma"], record["gray"], rng)
    else:
        noise = ops.generate_poisson_noise(arr, record["scale"], record["gray"], rng)
    return torch.from_numpy(noise).permute(2, 0, 1).to(img)


# ----------------------------------------------------------------------------- JPEG


def _quant_tables(base: list[int], qualities: list, device, dtype):
    """(B, 64) libjpeg ``jpeg_quality_scaling`` + ``jpeg_add_quant_table`` tables (baseline: clamp to [1, 255])."""
    rows = []
    for quality in qualities:
        q = min(max(int(quality), 1), 100)
        scale = 5000 // q if q < 50 else 200 - 2 * q
        rows.append([min(max((v * scale + 50) // 100, 1), 255) for v in base])
    return _tensor(rows, device, dtype)


def _dct_matrix(device, dtype):
    """8x8 orthonormal DCT-II matrix D (JPEG's FDCT of a block B is D B D^T)."""
    import torch

    n = torch.arange(8, dtype=torch.float64, device=device)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(dtype)


def _code_plane(plane, table, d):
    """Quantise (B, P, H, W) planes (H, W multiples of 8, level-shifted) in the 8x8 DCT domain
    and back, image b with the (64,) table ``table[b]``. The 2-D DCT D B D^T of every block is
    one (64, 64) matmul with kron(D, D)."""
    import torch

    b, p, h, w = plane.shape
    blocks = plane.reshape(b, p, h // 8, 8, w // 8, 8).transpose(3, 4).reshape(b, -1, 64)
    dd = torch.kron(d, d)
    table = table[:, None, :]
    coef = torch.round((blocks @ dd.T) / table) * table
    return (coef @ dd).reshape(b, p, h // 8, w // 8, 8, 8).transpose(3, 4).reshape(b, p, h, w)


def jpeg(x, quality, sizes: list | None = None):
    """Baseline JPEG (4:2:0, libjpeg tables) encode + decode of (B, 3, H, W) in [0, 1].

    ``quality``: an int for every image or a sequence of B. ``sizes``: the valid (h, w) of
    each image (top-left corner); None: the whole canvas.

    1. Round to 8 bits, pad each image to 16-pixel MCUs by edge replication (libjpeg).
    2. RGB -> YCbCr (JFIF); chroma 2x2 averaged.
    3. 8x8 DCT, quantise with the quality-scaled Annex K tables, dequantise, inverse DCT.
    4. Chroma upsampled with the triangle ("fancy") filter = bilinear x2, edge-replicated at
       each image's own MCU border; YCbCr -> RGB, round.
    """
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    sizes = sizes or [(h, w)] * b
    qualities = [quality] * b if isinstance(quality, (int, np.integer)) else list(quality)
    hp, wp = -(-max(s[0] for s in sizes) // 16) * 16, -(-max(s[1] for s in sizes) // 16) * 16
    px = torch.round(torch.clamp(x, 0, 1) * 255.0)
    px = _gather(px, _replicate_indices([s[0] for s in sizes], hp, x.device), _replicate_indices([s[1] for s in sizes], wp, x.device))
    r, g, bl = px[:, 0], px[:, 1], px[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    d = _dct_matrix(x.device, x.dtype)
    y = _code_plane((y - 128)[:, None], _quant_tables(_Q_LUMA, qualities, x.device, x.dtype), d)[:, 0] + 128
    chroma = _code_plane(chroma, _quant_tables(_Q_CHROMA, qualities, x.device, x.dtype), d)
    mcu = lambda i: [-(-s[i] // 16) * 8 for s in sizes]  # noqa: E731  (chroma size of each padded image)
    chroma = _gather(chroma, _replicate_indices(mcu(0), hp // 2, x.device), _replicate_indices(mcu(1), wp // 2, x.device))
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0], chroma[:, 1]
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    rgb = torch.clamp(torch.round(rgb), 0, 255)[:, :, :h, :w]
    return rgb / 255.0


# ----------------------------------------------------------------------------- pipelines


def usm_sharp(x, weight: float = 0.5, radius: int = 50, threshold: float = 10):
    """Unsharp mask with soft mask of (B, 3, H, W) in [0, 1] (BasicSR ``USMSharp``); see :func:`ops.usm_sharp`."""
    import cv2
    import torch

    if radius % 2 == 0:
        radius += 1
    g = cv2.getGaussianKernel(radius, 0)
    kernel = (g @ g.T).astype(np.float32)
    residual = x - filter2d(x, kernel)
    mask = (torch.abs(residual) * 255 > threshold).to(x.dtype)
    soft = filter2d(mask, kernel)
    sharp = torch.clamp(x + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * x


def _resize_sinc(x, finals: list, sizes: list, lr_size: tuple[int, int]):
    x = resize_ragged(x, sizes, [lr_size] * len(finals), [f["resize_mode"] for f in finals])
    return blur(x, [f["sinc"] for f in finals])


def _final(x, finals: list, sizes: list, lr_size: tuple[int, int]):
    """Step 3 for images that share an order: [resize + sinc] then JPEG, or the reverse."""
    qualities = [f["jpeg"]["quality"] for f in finals]
    if finals[0]["order"] == "resize_sinc_jpeg":
        return jpeg(_resize_sinc(x, finals, sizes, lr_size), qualities)
    return _resize_sinc(jpeg(x, qualities, sizes), finals, sizes, lr_size)


def realesrgan_degrade(x, params: list, scale: int, noise_from_numpy: bool = False):
    """Real-ESRGAN's second-order degradation of (B, 3, H, W) in [0, 1], one record per
    image; see :func:`refsr.degrade.numpy_exec.realesrgan_degrade` (same steps, same order).
    Returns (B, 3, H / scale, W / scale), quantised to 8-bit levels."""
    import torch

    b, _, h, w = x.shape
    lr_size = (h // scale, w // scale)
    s1, s2, finals = [p["stage1"] for p in params], [p["stage2"] for p in params], [p["final"] for p in params]
    # 1. First order: blur, resize by each image's factor, noise, clamp + JPEG.
    out = blur(x, [s["blur"] for s in s1])
    size1 = [ops.stage_size(h, w, s["resize"]["factor"]) for s in s1]
    out = resize_ragged(out, [(h, w)] * b, size1, [s["resize"]["mode"] for s in s1])
    out = add_noise(out, [s["noise"] for s in s1], size1, noise_from_numpy)
    out = jpeg(out, [s["jpeg"]["quality"] for s in s1], size1)
    # 2. Second order: optional blur, resize relative to HR/scale, noise.
    out = blur(out, [s["blur"] for s in s2], size1)
    f2 = [s["resize"]["factor"] for s in s2]
    size2 = [(max(1, int(h / scale * f)), max(1, int(w / scale * f))) for f in f2]
    out = resize_ragged(out, size1, size2, [s["resize"]["mode"] for s in s2])
    out = add_noise(out, [s["noise"] for s in s2], size2, noise_from_numpy)
    # 3. Final: [resize + sinc] then JPEG, or the reverse (images grouped by order); round and clamp.
    lr = x.new_empty(b, 3, *lr_size)
    for order in ("resize_sinc_jpeg", "jpeg_resize_sinc"):
        idx = [i for i, f in enumerate(finals) if f["order"] == order]
        if idx:
            lr[_index(idx, x.device)] = _final(out[_index(idx, x.device)], [finals[i] for i in idx], [size2[i] for i in idx], lr_size)
    return torch.clamp(torch.round(lr * 255.0), 0, 255) / 255.0


def degrade_batch(hr, params: list[dict], scale: int, noise_from_numpy: bool = False, return_hr: bool = False):
    """Degrade a batch of HR crops with one parameter record each (batched: see the module notes).

    Args:
        hr: (B, 3, H, W) float tensor in [0, 1] on any device; H, W multiples of ``scale``.
        params: B records of :func:`refsr.degrade.params.sample_params` (kinds may be mixed).
        scale: SR factor.
        noise_from_numpy: draw noise exactly as the numpy executor (CPU round trip per image).
        return_hr: also return the HR targets (unsharp-masked when the records say ``usm``).

    Returns:
        lr: (B, 3, H / scale, W / scale) in [0, 1], same device and dtype as ``hr``
        (and ``hr_target`` (B, 3, H, W) if ``return_hr``).
    """
    if hr.ndim != 4 or hr.shape[1] != 3 or len(params) != hr.shape[0]:
        raise ValueError(f"expected (B, 3, H, W) with B = len(params) = {len(params)}, got {tuple(hr.shape)}")
    if hr.shape[2] % scale or hr.shape[3] % scale:
        raise ValueError(f"HR size {hr.shape[3]}x{hr.shape[2]} is not a multiple of scale {scale}")
    target = hr.clone()
    usms = [tuple(sorted(p["usm"].items())) if p.get("usm") else None for p in params]
    for key in sorted(set(usms) - {None}):  # images sharing unsharp-mask settings, at once
        idx = _index([i for i, u in enumerate(usms) if u == key], hr.device)
        target[idx] = usm_sharp(hr[idx], **dict(key))
    lr = hr.new_empty(hr.shape[0], 3, hr.shape[2] // scale, hr.shape[3] // scale)
    bicubic = _index([k for k, p in enumerate(params) if p["kind"] == "bicubic"], hr.device)
    if len(bicubic):
        lr[bicubic] = _matlab_bicubic(target[bicubic], scale)
    real = [k for k, p in enumerate(params) if p["kind"] != "bicubic"]
    for group in _size_groups(real, params, hr.is_cuda):
        idx = _index(group, hr.device)
        lr[idx] = realesrgan_degrade(target[idx], [params[k] for k in group], scale, noise_from_numpy)
    return (lr, target) if return_hr else lr


def _size_groups(positions: list, params: list, on_gpu: bool) -> list[list[int]]:
    """``positions`` in groups of similar first-resize factor, so that the canvas a group
    shares wastes little: on the CPU up to ``CPU_SIZE_GROUPS`` groups of equal count; on a
    GPU one group (it has the bandwidth, and fewer, larger calls matter more there)."""
    n = 1 if on_gpu else min(CPU_SIZE_GROUPS, len(positions))
    order = sorted(positions, key=lambda k: params[k]["stage1"]["resize"]["factor"])
    return [order[g * len(order) // n : (g + 1) * len(order) // n] for g in range(n)]


def _matlab_bicubic(x, scale: int):
    """MATLAB-style antialiased bicubic downscale of (B, 3, H, W), rounded to 8 bits."""
    import torch

    h, w = x.shape[2:]
    ry = _tensor(ops.matlab_bicubic_weights(h, h // scale), x.device, x.dtype)
    rx = _tensor(ops.matlab_bicubic_weights(w, w // scale), x.device, x.dtype)
    out = torch.matmul(torch.matmul(ry, x), rx.T)
    return torch.clamp(torch.round(out * 255.0), 0, 255) / 255.0
