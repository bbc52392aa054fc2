"""Apply drawn degradation parameters to one image with numpy/OpenCV (the CLI path)."""

from __future__ import annotations

import numpy as np

from . import ops
from .kernels import make_kernel


def _noise(img: np.ndarray, record: dict) -> np.ndarray:
    rng = np.random.default_rng(record["seed"])
    if record["kind"] == "gaussian":
        return ops.add_gaussian_noise(img, record["sigma"], record["gray"], rng)
    return ops.add_poisson_noise(img, record["scale"], record["gray"], rng)


def _resize_sinc(img: np.ndarray, final: dict, lr_size: tuple[int, int]) -> np.ndarray:
    img = ops.resize(img, lr_size, final["resize_mode"])
    return ops.filter2d(img, make_kernel(final["sinc"])) if final["sinc"] else img


def realesrgan_degrade(hr: np.ndarray, params: dict, scale: int) -> np.ndarray:
    """Real-ESRGAN's second-order degradation (``RealESRGANModel.feed_data``) of one image.

    Args:
        hr: (H, W, 3) float32 RGB in [0, 1], H and W multiples of ``scale`` (already
            sharpened if ``params["usm"]``).
        params: a record of :func:`refsr.degrade.params.sample_params` with kind realesrgan.
        scale: the SR factor; the result is (H / scale, W / scale).

    Returns:
        (H / scale, W / scale, 3) float32 in [0, 1], quantised to 8-bit levels.
    """
    h, w = hr.shape[:2]
    lr_size = (h // scale, w // scale)
    s1, s2, final = params["stage1"], params["stage2"], params["final"]
    # 1. First order: blur, resize by the drawn factor, noise, clamp + JPEG.
    out = ops.filter2d(hr, make_kernel(s1["blur"]))
    out = ops.resize(out, ops.stage_size(h, w, s1["resize"]["factor"]), s1["resize"]["mode"])
    out = ops.add_jpg_compression(_noise(out, s1["noise"]), s1["jpeg"]["quality"])
    # 2. Second order: optional blur, resize relative to HR/scale, noise.
    if s2["blur"] is not None:
        out = ops.filter2d(out, make_kernel(s2["blur"]))
    size2 = (max(1, int(h / scale * s2["resize"]["factor"])), max(1, int(w / scale * s2["resize"]["factor"])))
    out = _noise(ops.resize(out, size2, s2["resize"]["mode"]), s2["noise"])
    # 3. Final: [resize to HR/scale + sinc] then JPEG, or the reverse; round and clamp.
    if final["order"] == "resize_sinc_jpeg":
        out = ops.add_jpg_compression(_resize_sinc(out, final, lr_size), final["jpeg"]["quality"])
    else:
        out = _resize_sinc(ops.add_jpg_compression(out, final["jpeg"]["quality"]), final, lr_size)
    return ops.quantize(out)


def sharpen_hr(hr: np.ndarray, params: dict) -> np.ndarray:
    """The HR target: ``hr`` unchanged, or its unsharp mask when ``params["usm"]`` is set."""
    usm = params.get("usm")
    if not usm:
        return hr
    return ops.usm_sharp(hr, usm["weight"], usm["radius"], usm["threshold"])


def degrade_image(hr: np.ndarray, params: dict, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``params`` to one HR crop.

    Args:
        hr: (H, W, 3) float32 RGB in [0, 1]; H and W multiples of ``scale``.

    Returns:
        ``(hr_target, lr)``: the HR target (unsharp-masked when ``usm``; Real-ESRGAN then
        degrades the sharpened image too) and the LR image (H / scale, W / scale, 3),
        both float32 in [0, 1].
    """
    if hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"HR size {hr.shape[1]}x{hr.shape[0]} is not a multiple of scale {scale}")
    target = sharpen_hr(hr, params)
    if params["kind"] == "bicubic":
        lr = ops.imresize_matlab(target, (hr.shape[0] // scale, hr.shape[1] // scale))
        return target, ops.quantize(lr)
    return target, realesrgan_degrade(target, params, scale)
