"""Colour correction of a restored image against its upsampled input.

Diffusion SR can drift in colour (the VQ latent and the sampler do not pin the low
frequencies). StableSR (Wang et al. 2023, Sec. 3.4) and SUPIR fix this after sampling:

- ``wavelet``: keep the output's high-frequency bands and take the low-frequency band of
  the bicubic-upsampled input (an a-trous wavelet decomposition, ``levels`` of a dilated
  3x3 binomial blur; 5 by default, as StableSR; each level less takes one more octave of
  the input: with L levels, roughly its periods above 2 ** (L + 1) px).
- ``adain``: shift and scale each colour channel of the output to the input's mean and
  standard deviation (AdaIN, Huang & Belongie 2017).
- ``luma``: ``wavelet``, then the chroma (Cb, Cr of ITU-R BT.601) of the upsampled input:
  the model restores the luma only, as the early SR networks did (SRCNN, Dong et al. 2014).
  The luma, and with it every Y-channel metric, is that of ``wavelet``; the colour is the
  input's, not the desaturated chroma of an autoencoder that keeps too little of it.
"""

from __future__ import annotations

COLOR_FIXES = ("none", "wavelet", "adain", "luma")
WAVELET_FIXES = ("wavelet", "luma")  # the fixes that take ``levels``
WAVELET_LEVELS = 5  # StableSR's


def _binomial_blur(image, dilation: int):
    """(B, C, H, W) float -> same, blurred by a 3x3 binomial kernel with ``dilation``
    (replicate padding, so the borders keep their colour)."""
    import torch
    import torch.nn.functional as F

    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    kernel = (k1[:, None] * k1[None, :]).expand(image.shape[1], 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=dilation)


def wavelet_decompose(image, levels: int = WAVELET_LEVELS):
    """A-trous wavelet split of (B, C, H, W) ``image`` into ``(high, low)``, with
    ``high + low == image``; level i blurs with dilation 2**i."""
    high = image.new_zeros(image.shape)
    low = image
    for i in range(levels):
        blurred = _binomial_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(output, reference, levels: int = WAVELET_LEVELS):
    """The high frequencies of ``output`` plus the low frequencies of ``reference``.

    Args:
        output, reference: (B, 3, H, W) float tensors of the same shape and range.
    """
    high, _ = wavelet_decompose(output, levels)
    _, low = wavelet_decompose(reference, levels)
    return high + low


def adain_color_fix(output, reference, eps: float = 1e-5):
    """Per-channel mean/std of ``output`` matched to ``reference`` (both (B, 3, H, W))."""
    mu_o, sd_o = output.mean(dim=(2, 3), keepdim=True), output.std(dim=(2, 3), keepdim=True)
    mu_r, sd_r = reference.mean(dim=(2, 3), keepdim=True), reference.std(dim=(2, 3), keepdim=True)
    return (output - mu_o) / (sd_o + eps) * sd_r + mu_r


def _chroma_projection(dtype, device):
    """The 3x3 matrix that maps RGB to its chroma part: ``P @ rgb`` has zero BT.601 luma and
    the Cb, Cr of ``rgb`` (``rgb - P @ rgb`` has zero Cb, Cr): ``M^-1 diag(0, 1, 1) M``."""
    import torch

    from ..metrics.fidelity import BT601_CBCR_WEIGHTS, BT601_Y_WEIGHTS

    m = torch.tensor([BT601_Y_WEIGHTS, *BT601_CBCR_WEIGHTS], dtype=torch.float64)
    p = torch.linalg.inv(m) @ torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)) @ m
    return p.to(dtype=dtype, device=device)


def chroma_from(output, reference):
    """``output``'s BT.601 luma with ``reference``'s chroma (Cb, Cr); (B, 3, H, W) RGB of the
    same shape and range (the offsets of Y, Cb and Cr cancel)."""
    import torch

    p = _chroma_projection(output.dtype, output.device)
    return output + torch.einsum("ij,bjhw->bihw", p, reference - output)


def luma_color_fix(output, reference, levels: int = WAVELET_LEVELS):
    """:func:`wavelet_color_fix`, then :func:`chroma_from` ``reference``."""
    return chroma_from(wavelet_color_fix(output, reference, levels), reference)


_FIXES = {"wavelet": wavelet_color_fix, "adain": adain_color_fix, "luma": luma_color_fix}


def apply_color_fix(output, reference, method: str = "none", levels: int = WAVELET_LEVELS):
    """Apply ``method`` (``none``, ``wavelet``, ``adain`` or ``luma``) to (B, 3, H, W) ``output``
    using the bicubic-upsampled input ``reference`` of the same shape; float32 in [-1, 1]
    in and out (clamped). ``levels``: the wavelet levels of ``wavelet`` and ``luma``.

    Raises:
        ValueError: unknown ``method``, naming the allowed set.
    """
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown color fix {method!r}; expected one of {', '.join(COLOR_FIXES)}")
    if method == "none":
        return output
    if output.shape != reference.shape:
        raise ValueError(f"color fix needs equal shapes, got {tuple(output.shape)} and {tuple(reference.shape)}")
    extra = {"levels": levels} if method in WAVELET_FIXES else {}
    return _FIXES[method](output, reference, **extra).clamp(-1.0, 1.0)
