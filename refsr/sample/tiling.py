"""Tiling in latent space: a tile grid, smooth blending weights, tiled application.

Large images are processed as overlapping latent tiles (MultiDiffusion, Bar-Tal et al.
2023; StableSR's tiled sampling). At *every* denoising step each tile's noise prediction
is computed and the predictions are averaged with smooth weights where tiles overlap, so
the whole canvas follows one trajectory and no seam can form. The VQ decoder is tiled the
same way. The weights never reach zero, and they are normalised per pixel before use, so
a single tile covering the canvas gets weight exactly 1 (tiled == untiled, bit for bit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Tile:
    """A tile of a canvas: rows ``y:y+h``, columns ``x:x+w`` (in the canvas' own pixels)."""

    y: int
    x: int
    h: int
    w: int

    def scaled(self, factor: int) -> "Tile":
        """The same tile on a canvas ``factor`` times larger (e.g. latent -> HR pixels)."""
        return Tile(self.y * factor, self.x * factor, self.h * factor, self.w * factor)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def lr_multiple(scale: int, vq_factor: int, unet_factor: int) -> int:
    """The smallest LR size step such that the latent of an LR side that is a multiple of
    it is an integer and divisible by the U-Net's total downsampling ``unet_factor``.

    The latent of an LR side ``n`` has ``n * scale / vq_factor`` pixels; we need
    ``n * scale`` divisible by ``vq_factor * unet_factor``.
    """
    need = vq_factor * unet_factor
    return need // math.gcd(int(scale), need)


def pad_to_multiple(image, multiple: int):
    """Pad (B, C, H, W) ``image`` at the bottom/right to multiples of ``multiple``.

    Reflect padding where the image is large enough, replicate otherwise (tiny images).

    Returns:
        `(padded, (H, W))`: the padded tensor and the original size, for cropping back.
    """
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(image, (0, pw, 0, ph), mode=mode), (h, w)


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least
    ``overlap`` pixels shared by neighbours, spread evenly, first at 0 and last at
    ``length - tile``. Starts are rounded to multiples of ``align`` where possible.

    Raises:
        ValueError: ``overlap >= tile`` (the grid would never advance).
    """
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    n = math.ceil((length - overlap) / (tile - overlap))
    n = max(n, 2)
    last = length - tile
    starts = [round(i * last / (n - 1) / align) * align for i in range(n)]
    starts[-1] = last
    return sorted(set(min(max(s, 0), last) for s in starts))


def tile_grid(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[Tile]:
    """The tiles (row-major) of an ``height`` x ``width`` canvas; see :func:`tile_starts`."""
    th, tw = min(tile, height), min(tile, width)
    return [
        Tile(y, x, th, tw)
        for y in tile_starts(height, tile, overlap, align)
        for x in tile_starts(width, tile, overlap, align)
    ]


def ramp_1d(length: int, ramp: int):
    """(length,) float64 weights: 1 inside, a raised-cosine ramp over ``ramp`` pixels at
    both ends, never zero (the end pixel gets ``sin^2(pi / (4 ramp))``)."""
    import torch

    d = torch.minimum(torch.arange(length), torch.arange(length).flip(0)).double()
    if ramp <= 0:
        return torch.ones(length, dtype=torch.float64)
    w = torch.sin(0.5 * math.pi * (d + 0.5) / ramp).clamp(max=1.0) ** 2
    return torch.where(d < ramp, w, torch.ones_like(w))


def blend_weights(tiles: Sequence[Tile], height: int, width: int, ramp: int, device=None) -> list:
    """Per-tile weights normalised per pixel: ``w_k / sum_j w_j`` over the canvas.

    Each tile's raw weight is the outer product of two :func:`ramp_1d` (separable), and
    the normalised weights of the tiles covering a pixel sum to 1 there.

    Returns:
        list of (1, 1, h_k, w_k) float32 tensors, one per tile.
    """
    import torch

    raw = [ramp_1d(t.h, ramp)[:, None] * ramp_1d(t.w, ramp)[None, :] for t in tiles]
    total = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(tiles, raw):
        total[t.slices()] += w
    if (total <= 0).any():
        raise ValueError("tiles do not cover the canvas")
    return [(w / total[t.slices()]).float()[None, None].to(device) for t, w in zip(tiles, raw)]


def cut_tiles(canvas, tiles: Sequence[Tile], units: Sequence[tuple[int, int]]):
    """The pixels of ``canvas`` (B, C, H, W) under each unit ``(tile k, item b)``, stacked:
    (len(units), C, h, w) (the batch :func:`blend_tiles` hands its ``fn``)."""
    import torch

    return torch.cat([canvas[b : b + 1, :, tiles[k].slices()[0], tiles[k].slices()[1]] for k, b in units])


def blend_tiles(
    fn: Callable,
    canvas_shape: Sequence[int],
    tiles: Sequence[Tile],
    weights: Sequence,
    batch_size: int = 1,
    device=None,
):
    """Evaluate ``fn`` on batches of tiles and blend the results into one canvas.

    The work comes in units ``(k, b)``: tile ``k`` of canvas item ``b`` (B items share the
    grid, e.g. several draws of the noise of one image), ordered tile by tile, each tile's
    items together, and handed to ``fn`` ``batch_size`` at a time.

    Args:
        fn: ``fn(units) -> (len(units), C, h, w)``: the results for the ``units``, a list of
            ``(tile index, item index)`` pairs (all tiles of a grid have the same size).
        canvas_shape: (B, C, H, W) of the output canvas.
        weights: from :func:`blend_weights`, in the output canvas' pixels.

    Returns:
        `torch.Tensor`: (B, C, H, W) float32, ``sum_k w_k * fn((k, b))`` per pixel of item b.
    """
    import torch

    out = torch.zeros(tuple(canvas_shape), dtype=torch.float32, device=device)
    units = [(k, b) for k in range(len(tiles)) for b in range(canvas_shape[0])]
    step = max(1, batch_size)
    for start in range(0, len(units), step):
        chunk = units[start : start + step]
        result = fn(chunk).float()
        for j, (k, b) in enumerate(chunk):
            ys, xs = tiles[k].slices()
            out[b : b + 1, :, ys, xs] += weights[k] * result[j : j + 1]
    return out
