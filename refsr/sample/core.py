"""Restoring one image tensor: padding, contexts, (tiled) denoising, (tiled) decoding.

The numbered steps follow LDM-SR sampling (Rombach et al. 2022, Sec. 4.4; diffusers'
``LDMSuperResolutionPipeline``): the LR image in [-1, 1] is concatenated to the noisy
latent, ``vqvae.decode`` then clamp (through ``RefSRModel.decode``, which applies the
model's latent scale). On top of it: the LR and reference contexts of ``ldm-ca`` are
computed once and reused at every step, large inputs are tiled in latent space
(:mod:`refsr.sample.tiling`), and ``start_strength < 1`` starts the reverse process from
the noised latent of the bicubic-upsampled LR instead of pure noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from .color_fix import COLOR_FIXES, WAVELET_FIXES, WAVELET_LEVELS, apply_color_fix
from .samplers import SAMPLERS, denoise, make_scheduler
from .tiling import Tile, blend_tiles, blend_weights, cut_tiles, lr_multiple, pad_to_multiple, tile_grid

PRECISIONS = ("fp32", "bf16", "fp16")
# The LR contexts of an image's tiles kept across denoising steps, at most (bytes); the
# tiles beyond it recompute E_LR at each step (the same values: outputs do not depend on it).
LR_CONTEXT_CACHE_BYTES = 1 << 30
# The E_Ref inputs of reference fragments kept across the images of a run, at most (bytes):
# a fragment that several inputs share (the same file and box) is VQ-encoded once.
REF_INPUT_CACHE_BYTES = 256 << 20


@dataclass
class SampleSettings:
    """How to sample. ``tile``/``tile_overlap`` are in input (LR) pixels; ``tile=0`` never
    tiles. ``batch_size`` is the number of latents per U-Net / decoder call: tiles, and with
    ``draws`` K > 1 the K draws of each tile (or of the untiled image); it sets the bytes of
    the result with the seed, device and precision.
    ``cache_context=False`` recomputes the LR/reference contexts at every step (tests).
    ``start_strength`` in (0, 1]: 1 = from pure noise; S < 1 = from timestep about S x T,
    starting from the noised latent of the bicubic-upsampled LR. ``draws`` >= 1: the denoised
    latent is the mean over that many draws of the start noise (one decode): an estimate
    closer to the mean restoration given the LR, which PSNR/SSIM reward, at the cost of
    ``draws`` times the denoising work and of fine texture. ``mirror``: every second draw
    (1, 3, ...) restores the left-right mirror image; the mean latent of each orientation is
    decoded, the mirrored image mirrored back, and the output is the mean of the two images
    weighted by their draws: a self-ensemble for one more VQ decode (and encode) per image, no
    more denoising (photos are mirror-symmetric, so the references stay as they are); no
    effect with one draw. ``color_fix_levels``: the wavelet levels of the ``wavelet`` and
    ``luma`` fixes (fewer take more of the upsampled input). ``steps``, ``color_fix``,
    ``color_fix_levels``, ``start_strength``, ``draws`` and ``mirror`` left None take the model's
    recommended values (see :func:`recommended_settings`)."""

    sampler: str = "ddim"
    steps: int | None = None
    eta: float = 0.0
    tile: int = 128
    tile_overlap: int = 16
    batch_size: int = 1
    precision: str = "fp32"
    color_fix: str | None = None
    color_fix_levels: int | None = None
    start_strength: float | None = None
    draws: int | None = None
    mirror: bool | None = None
    cache_context: bool = True

    def check(self) -> None:
        """Raises ValueError naming a bad value and the allowed set."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.color_fix is not None and self.color_fix not in COLOR_FIXES:
            raise ValueError(f"unknown color fix {self.color_fix!r}; expected one of {', '.join(COLOR_FIXES)}")
        if (self.steps is not None and self.steps < 1) or self.batch_size < 1 or self.tile < 0 or self.tile_overlap < 0:
            raise ValueError("steps and batch size must be >= 1, tile and tile overlap >= 0")
        if self.color_fix_levels is not None and (isinstance(self.color_fix_levels, bool)
                                                  or not isinstance(self.color_fix_levels, int)
                                                  or self.color_fix_levels < 1):
            raise ValueError(f"color fix levels must be an integer >= 1, got {self.color_fix_levels!r}")
        if self.draws is not None and (isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1):
            raise ValueError(f"draws must be an integer >= 1, got {self.draws!r}")
        if self.mirror is not None and not isinstance(self.mirror, bool):
            raise ValueError(f"mirror must be True, False or None, got {self.mirror!r}")
        if self.start_strength is not None and not 0.0 < self.start_strength <= 1.0:
            raise ValueError(f"start strength must be in (0, 1], got {self.start_strength}")
        if self.tile and self.tile_overlap >= self.tile:
            raise ValueError(f"tile overlap {self.tile_overlap} must be smaller than the tile {self.tile}")


# The sampling settings a model may recommend, as ``recipe["recommended_<name>"]`` in its
# model_index.json (chosen by measurement on held-out images), and what a model that
# recommends none gets: diffusers' LDM-SR sampling (50 steps from pure noise, no colour fix,
# one draw of the noise, none mirrored), and StableSR's 5 wavelet levels for a colour fix.
RECOMMENDABLE = {"steps": 50, "color_fix": "none", "color_fix_levels": WAVELET_LEVELS, "start_strength": 1.0,
                 "draws": 1, "mirror": False}


def recommended_settings(model) -> dict:
    """The sampling settings ``model`` recommends: ``{"steps", "color_fix", "color_fix_levels",
    "start_strength", "draws", "mirror"}`` from its ``recipe["recommended_<name>"]``, else
    :data:`RECOMMENDABLE`'s defaults."""
    recipe = getattr(model, "recipe", None) or {}
    return {name: recipe.get(f"recommended_{name}", default) for name, default in RECOMMENDABLE.items()}


def start_strength_for(model, requested: float | None = None) -> float:
    """Where the reverse process starts for ``model``: ``requested``, else the model's
    ``recipe["recommended_start_strength"]``, else 1 (from pure noise).

    Raises:
        InputError: ``requested`` above the model's ``recipe["max_strength"]`` (a model trained
            only on timesteps below max_strength x T cannot start from noisier latents).
    """
    from ..errors import InputError

    recipe = getattr(model, "recipe", None) or {}
    strength = float(recommended_settings(model)["start_strength"] if requested is None else requested)
    limit = float(recipe.get("max_strength", 1.0))
    if strength > limit + 1e-9:
        raise InputError(f"start strength {strength:g} is above {limit:g}, the most this model was trained for "
                         f"(recipe.max_strength: timesteps below {limit:g} x T only); use --start-strength <= {limit:g}")
    return strength


def resolve_settings(model, settings: SampleSettings) -> SampleSettings:
    """``settings`` checked, with what was left None taken from ``model``'s recommendations
    (:func:`recommended_settings`) and the start strength checked against what it was
    trained for (:func:`start_strength_for`). ``color_fix_levels`` is None unless the colour fix
    has wavelet levels; resolving resolved settings changes nothing.

    Raises:
        OptionError: ``color_fix_levels`` given with a colour fix that has no wavelet levels.
    """
    from ..errors import OptionError

    settings.check()
    given = {name: getattr(settings, name) for name in RECOMMENDABLE if getattr(settings, name) is not None}
    resolved = dataclasses.replace(settings, **{**recommended_settings(model), **given})
    resolved = dataclasses.replace(resolved, start_strength=start_strength_for(model, resolved.start_strength))
    resolved.check()  # a model's recommendation is checked like a user's value
    if resolved.color_fix not in WAVELET_FIXES:  # levels apply to these only: None, as a resolved run records it
        if settings.color_fix_levels is not None:
            raise OptionError("color_fix_levels", f"the {resolved.color_fix} colour fix has no wavelet levels; "
                              f"they apply to {' and '.join(WAVELET_FIXES)}")
        resolved = dataclasses.replace(resolved, color_fix_levels=None)
    return resolved


# ---------------------------------------------------------------------------------------
# Model geometry and precision
# ---------------------------------------------------------------------------------------


def model_factors(model) -> tuple[int, int, int]:
    """``(scale, vq_factor, unet_factor)``: SR factor, VQ downsampling, U-Net downsampling."""
    from ..models.autoencoder import vq_downsampling

    unet = 2 ** (len(model.unet.config.down_block_types) - 1)
    return int(model.scale), vq_downsampling(model.vqvae), unet


def autocast_for(device, precision: str):
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32).

    Raises:
        ValueError: fp16 on CPU (not supported there; use bf16 or fp32).
    """
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision fp16 is not supported on CPU; use --precision bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Batching model contexts (LRContext / RefContext are dataclasses of tensors)
# ---------------------------------------------------------------------------------------


def tree_map(fn: Callable, obj):
    """Apply ``fn`` to every tensor inside dataclasses, dicts, lists and tuples."""
    import torch

    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: tree_map(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def tree_cat(items: list):
    """Concatenate a list of same-structured contexts along the batch axis."""
    import torch

    first = items[0]
    if first is None:
        return None
    if len(items) == 1:
        return first
    if isinstance(first, bool):  # e.g. RefContext.any_real
        return any(items)
    if isinstance(first, torch.Tensor):
        return torch.cat(items, dim=0)
    if dataclasses.is_dataclass(first):
        names = [f.name for f in dataclasses.fields(first) if f.init]
        return type(first)(**{n: tree_cat([getattr(it, n) for it in items]) for n in names})
    if isinstance(first, dict):
        return {k: tree_cat([it[k] for it in items]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(tree_cat(list(vs)) for vs in zip(*items))
    return first


def tree_repeat(obj, n: int):
    """A batch-1 context repeated to batch ``n`` (a view; no copy)."""
    if obj is None or n == 1:
        return obj
    return tree_map(lambda t: t.expand(n, *t.shape[1:]) if t.dim() > 0 and t.shape[0] == 1 else t, obj)


# ---------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------


@dataclass
class _Canvas:
    """The geometry of one image: padded LR, upsampled LR, latent size and tiles."""

    lr: object  # (1, 3, Hp, Wp) padded LR in [-1, 1]
    lr_up: object  # (1, 3, Hp*s, Wp*s) bicubic upsampling of ``lr``, clamped to [-1, 1]
    size: tuple[int, int]  # original LR (H, W)
    latent: tuple[int, int, int]  # (C, h, w)
    tiles: list[Tile] | None  # latent tiles, None = untiled
    lr_per_latent: float  # LR pixels per latent pixel (vq_factor / scale)
    vq: int


def _plan(model, lr, settings: SampleSettings, force_tiles: bool = False) -> _Canvas:
    """Step 1: pad the LR to what the model needs, upsample it, lay out the tiles."""
    from ..models.ldm import upsample_lr

    scale, vq, unet = model_factors(model)
    lr_pad, size = pad_to_multiple(lr, lr_multiple(scale, vq, unet))
    lr_up = upsample_lr(lr_pad, scale)
    hl, wl = lr_pad.shape[-2] * scale // vq, lr_pad.shape[-1] * scale // vq
    tiles = None
    if settings.tile and (force_tiles or max(size) > settings.tile):
        align = scale // math.gcd(scale, vq)
        step = unet * align // math.gcd(unet, align)
        tile_l = max(step, settings.tile * scale // vq // step * step)
        overlap_l = min(settings.tile_overlap * scale // vq, tile_l - 1)
        tiles = tile_grid(hl, wl, tile_l, overlap_l, align)
    return _Canvas(lr_pad, lr_up, size, (model.vqvae.config.latent_channels, hl, wl), tiles, vq / scale, vq)


def _lr_tile(canvas: _Canvas, tile: Tile | None):
    """The padded-LR pixels and the upsampled-LR (HR) pixels under a latent ``tile``."""
    if tile is None:
        return canvas.lr, canvas.lr_up
    f = canvas.lr_per_latent
    y0, x0, y1, x1 = (round(v * f) for v in (tile.y, tile.x, tile.y + tile.h, tile.x + tile.w))
    hr = tile.scaled(canvas.vq)
    ys, xs = hr.slices()
    return canvas.lr[:, :, y0:y1, x0:x1], canvas.lr_up[:, :, ys, xs]


def _lr_context_fn(model, canvas: _Canvas, settings: SampleSettings, lr_latents: dict | None, budget: int) -> Callable:
    """``lr_context(k)``: the LR context of tile ``k`` (see ``RefSRModel.encode_lr``).

    Kept across steps while all tiles' contexts together stay within ``budget`` bytes (the
    views of an image share ``LR_CONTEXT_CACHE_BYTES``);
    beyond that a tile keeps only its E_LR input (VQ latent || LR at latent size, a few
    channels at latent size) and E_LR runs again at each step, so memory stays flat in image
    size. ``lr_latents``: tile -> VQ latent of its upsampled LR, where :func:`_encode_lr_up`
    already computed it (not encoded again). ``cache_context`` off: everything is
    recomputed at each step (tests)."""
    tiles = canvas.tiles or [None]
    lr_latents = lr_latents or {}

    def branch_input(k):
        return model.branch_input(_lr_tile(canvas, tiles[k])[1], latents=lr_latents.get(k))

    encode = lambda k: model.encode_lr(inputs=branch_input(k))  # noqa: E731
    if not settings.cache_context:
        return encode
    contexts, inputs, used, size = {}, {}, 0, 0
    for k in range(len(tiles)):
        if used + size <= budget:
            contexts[k] = encode(k)
            size = sum(t.numel() * t.element_size() for t in contexts[k].queries.values())
            used += size
        else:
            inputs[k] = branch_input(k)
    return lambda k: contexts[k] if k in contexts else model.encode_lr(inputs=inputs[k])


class ReferenceInputCache:
    """E_Ref inputs of reference fragments (``RefSRModel.branch_input``: VQ latent || fragment at
    latent size), by a key naming the fragment (its file and box), least recently used
    dropped beyond ``max_bytes``. One per run and model: an input is the same whichever
    image uses it (:func:`reference_inputs` encodes every fragment on its own)."""

    def __init__(self, max_bytes: int | None = None):
        from collections import OrderedDict

        self.max_bytes = REF_INPUT_CACHE_BYTES if max_bytes is None else int(max_bytes)
        self.items: OrderedDict = OrderedDict()
        self.bytes = self.hits = self.misses = 0

    def __contains__(self, key) -> bool:
        return key in self.items

    def get(self, key):
        found = self.items.get(key)
        if found is not None:
            self.items.move_to_end(key)
            self.hits += 1
        return found

    def put(self, key, value) -> None:
        self.misses += 1
        if _nbytes(value) > self.max_bytes:
            return
        if key in self.items:
            self.bytes -= _nbytes(self.items.pop(key))
        self.items[key] = value
        self.bytes += _nbytes(value)
        while self.bytes > self.max_bytes:
            self.bytes -= _nbytes(self.items.popitem(last=False)[1])


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def reference_inputs(model, refs, ref_mask=None, keys=None, cache: ReferenceInputCache | None = None):
    """E_Ref inputs (B, R, C+3, s, s) of ``refs`` (B, R, 3, S, S) in [-1, 1]: every real fragment
    VQ-encoded on its own (a batch of one), so a fragment's input does not depend on which
    others share its image, its batch or the cache; zeros where ``ref_mask`` is False.
    ``keys`` (B x R nested, one hashable per fragment) with ``cache``: a fragment seen before
    in the run is not encoded again."""
    import torch

    b, r = refs.shape[:2]
    mask = torch.ones(b, r, dtype=torch.bool) if ref_mask is None else ref_mask.cpu()
    positions = [(i, j) for i in range(b) for j in range(r) if mask[i, j]]
    use_cache = keys is not None and cache is not None
    # every hit first, then the misses: a miss's insertion may evict, but never a hit of this call
    found = {(i, j): cache.get(keys[i][j]) for i, j in positions} if use_cache else {}
    for i, j in positions:
        if found.get((i, j)) is None:
            found[i, j] = model.branch_input(refs[i, j][None])[0]
            if use_cache:
                cache.put(keys[i][j], found[i, j])
    lat = refs.shape[-1] // model_factors(model)[1]
    inputs = refs.new_zeros(b, r, model.vqvae.config.latent_channels + 3, lat, lat)
    for i, j in positions:
        inputs[i, j] = found[i, j]
    return inputs


def _reference_context(model, refs, ref_mask, keys=None, cache=None):
    """The keys/values of ``refs`` for ``model`` (:func:`reference_inputs`, then E_Ref)."""
    return model.encode_references(inputs=reference_inputs(model, refs, ref_mask, keys, cache), mask=ref_mask)


def _mirrored(canvas: _Canvas) -> _Canvas:
    """The left-right mirror image of ``canvas`` (the padding moves to the left; the tiles
    stay where they are, so the decoded images line up once the mirrored one is mirrored back)."""
    return dataclasses.replace(canvas, lr=canvas.lr.flip(-1), lr_up=canvas.lr_up.flip(-1))


def _make_eps_fn(model, views: list[_Canvas], refs, ref_mask, settings: SampleSettings, ref_context=None,
                 lr_latents=None):
    """Steps 2-3: contexts and ``eps_fn(x, t)`` for a batch of draws, draw ``b`` of the
    image as ``views[b % len(views)]`` shows it (the canvas, and with ``mirror`` its mirror
    image: :func:`_mirrored`). The reference keys/values are computed once per image (or given:
    ``ref_context``), the LR contexts once per tile of each view (see :func:`_lr_context_fn`;
    ``lr_latents[v]`` as there, for view ``v``); with ``cache_context`` off, both at every step."""
    has_refs = ref_context is not None or (refs is not None and bool(ref_mask.any()))
    use_refs = getattr(model, "kind", "ldm") == "ldm-ca" and has_refs
    canvas, n_views = views[0], len(views)
    tiles = canvas.tiles or [None]
    if use_refs:
        lr_latents = lr_latents or [None] * n_views
        budget = LR_CONTEXT_CACHE_BYTES // n_views  # the views share the cap on kept contexts
        lr_context = [_lr_context_fn(model, view, settings, latents, budget) for view, latents in zip(views, lr_latents)]
        ref_cached = ref_context
        if ref_cached is None and settings.cache_context:
            ref_cached = _reference_context(model, refs, ref_mask)

    def predict(x, t, idx):  # x: one latent per entry of idx, the (view, tile) it covers
        n = len(idx)
        lr = tree_cat([_lr_tile(views[v], tiles[k])[0] for v, k in idx])
        lr_ctx = ref_ctx = None
        if use_refs:
            ctx = {(v, k): lr_context[v](k) for v, k in dict.fromkeys(idx)}  # a tile's draws share its context
            lr_ctx = tree_cat([ctx[key] for key in idx])
            ref_ctx = tree_repeat(ref_cached if ref_cached is not None else _reference_context(model, refs, ref_mask), n)
        return model(x, t.reshape(1).expand(n), lr, lr_context=lr_ctx, ref_context=ref_ctx).float()

    step = max(1, settings.batch_size)
    if canvas.tiles is None:  # the draws (the batch of x), batch_size per call
        import torch

        def eps_whole(x, t):
            parts = [predict(x[i : i + step], t, [(b % n_views, 0) for b in range(i, min(i + step, len(x)))])
                     for i in range(0, x.shape[0], step)]
            return torch.cat(parts)

        return eps_whole
    weights = _latent_weights(canvas, settings)

    def eps_tiled(x, t):
        fn = lambda units: predict(cut_tiles(x, canvas.tiles, units), t, [(b % n_views, k) for k, b in units])  # noqa: E731
        return blend_tiles(fn, x.shape, canvas.tiles, weights, step, device=x.device)

    return eps_tiled


def _ramp(settings: SampleSettings, canvas: _Canvas) -> int:
    """Blending ramp length in latent pixels: the requested overlap, at least 1."""
    return max(1, round(settings.tile_overlap / canvas.lr_per_latent))


def _latent_weights(canvas: _Canvas, settings: SampleSettings) -> list:
    """Blending weights of the latent tiles (:func:`refsr.sample.tiling.blend_weights`)."""
    return blend_weights(canvas.tiles, canvas.latent[1], canvas.latent[2], _ramp(settings, canvas), device=canvas.lr.device)


def _encode_lr_up(model, canvas: _Canvas, settings: SampleSettings, latents: dict | None = None):
    """The latent of the bicubic-upsampled LR (for ``start_strength < 1``), tiled with the
    latent grid (blended in latent pixels) if tiled: (1, C, h, w) float32. ``latents``, if
    given, receives each tile's own latent (tile 0 when untiled), for E_LR to reuse."""
    import torch

    latents = {} if latents is None else latents
    if canvas.tiles is None:
        latents[0] = model.encode(canvas.lr_up)
        return latents[0].float()
    weights = _latent_weights(canvas, settings)

    def fn(units):  # one item: (k, 0)
        z = model.encode(torch.cat([_lr_tile(canvas, canvas.tiles[k])[1] for k, _ in units]))
        latents.update({k: z[j : j + 1] for j, (k, _) in enumerate(units)})
        return z

    return blend_tiles(fn, (1, *canvas.latent), canvas.tiles, weights, settings.batch_size, device=canvas.lr.device)


def _decode(model, x, canvas: _Canvas, settings: SampleSettings):
    """Step 5: VQ decoding, tiled with the latent grid (blended in HR pixels) if tiled."""
    import torch

    if canvas.tiles is None:
        return model.decode(x).float()
    hr_tiles = [t.scaled(canvas.vq) for t in canvas.tiles]
    h, w = x.shape[-2] * canvas.vq, x.shape[-1] * canvas.vq
    weights = blend_weights(hr_tiles, h, w, _ramp(settings, canvas) * canvas.vq, device=x.device)
    fn = lambda units: model.decode(cut_tiles(x, canvas.tiles, units))  # noqa: E731
    return blend_tiles(fn, (x.shape[0], 3, h, w), hr_tiles, weights, settings.batch_size, device=x.device)


def encode_references(model, refs, ref_mask=None, settings: SampleSettings | None = None, keys=None,
                      cache: ReferenceInputCache | None = None):
    """``refs`` (1, R, 3, S, S) in [-1, 1] encoded for ``model`` as :func:`restore_tensor` does
    (no grad, the settings' precision): the per-level keys/values that ``restore_tensor(...,
    ref_context=...)`` takes, so images sharing their references (``refsr sample --refs``)
    encode them once. ``keys`` and ``cache``: see :func:`reference_inputs` (fragments that
    several images share are VQ-encoded once). None for a model without a reference branch."""
    import torch

    settings = settings or SampleSettings()
    device = next(model.parameters()).device
    if getattr(model, "kind", "ldm") != "ldm-ca":
        return None
    with torch.no_grad(), autocast_for(device, settings.precision):
        return _reference_context(model, refs, ref_mask, keys, cache)


def _mean_denoised(eps_fn, noises, scheduler, settings: SampleSettings, generator, callback, disable, init,
                   n_views: int = 1) -> list:
    """Step 4 for the K draws of the start noise at once (``noises`` (K, C, h, w): one pass of
    the sampler over a batch of K, the contexts in ``eps_fn`` computed once), then the mean of
    the denoised latents of each view: draw ``b`` is of view ``b % n_views``
    (:func:`_make_eps_fn`; ``n_views`` <= K, as ``restore_tensor`` mirrors only with two or more
    draws) and starts from ``init[b % n_views]`` ((n_views, C, h, w)). Summed
    in draw order; for one draw the latent itself (dividing by 1 is exact). Returns
    ``[(mean latent (1, C, h, w), number of draws)]``, one per view, in that view's orientation
    (a latent is not mirror-symmetric: a mirrored draw is mirrored back only once decoded)."""
    if init is not None:
        init = init[[b % n_views for b in range(noises.shape[0])]]
    x0 = denoise(eps_fn, noises, scheduler, settings.steps, settings.eta, generator, callback, disable,
                 init_latents=init, strength=settings.start_strength)
    means = []
    for v in range(n_views):
        draws = list(range(v, x0.shape[0], n_views))
        x = x0[draws[0] : draws[0] + 1]
        for k in draws[1:]:
            x = x + x0[k : k + 1]
        means.append((x / len(draws), len(draws)))
    return means


def restore_tensor(
    model,
    lr,
    refs=None,
    ref_mask=None,
    settings: SampleSettings | None = None,
    generator=None,
    callback: Callable | None = None,
    disable: bool | None = None,
    force_tiles: bool = False,
    ref_context=None,
):
    """Super-resolve one LR image with ``model`` (a ``RefSRModel``).

    Args:
        lr (`torch.Tensor`): (1, 3, H, W) float32 in [-1, 1], on the model's device.
        refs (`torch.Tensor`, *optional*): (1, R, 3, S, S) float32 in [-1, 1], S = ``model.ref_size``.
        ref_mask (`torch.Tensor`, *optional*): (1, R) bool, True for real references.
        settings (`SampleSettings`): sampler, steps, eta, start strength, draws, tiling, precision, colour fix.
        generator (`torch.Generator`, *optional*): the initial noise is drawn from it for
            the whole latent canvas at once (on the generator's device, then moved), so a
            tile's noise depends on its position only; with ``draws`` K > 1, K such draws one
            after another (the first is a one-draw run's noise). The stochastic samplers draw
            from it too (their step noise for the K draws at once).
        callback, disable: see :func:`refsr.sample.samplers.denoise` (one pass of the steps; with
            K draws its ``x`` holds the K latents, (K, C, h, w)).
        force_tiles (`bool`): take the tiled path even for an image that fits one tile.
        ref_context (*optional*): the references already encoded by :func:`encode_references`
            (then ``refs`` is not used): many images restored with the same references
            encode them once.

    Returns:
        `torch.Tensor`: (1, 3, H*scale, W*scale) float32 in [-1, 1].
    """
    import torch

    settings = resolve_settings(model, settings or SampleSettings())
    device = next(model.parameters()).device
    if refs is not None and ref_mask is None:
        ref_mask = torch.ones(refs.shape[:2], dtype=torch.bool, device=device)
    with torch.no_grad(), autocast_for(device, settings.precision):
        # 1. geometry; 2. x_T ~ N(0, I) for the whole canvas (and the LR's latent to start from)
        canvas = _plan(model, lr.float(), settings, force_tiles)
        gen_device = generator.device if generator is not None else "cpu"
        # (the draws one after another: draw 0 is the noise of a one-draw run)
        noises = torch.cat([torch.randn((1, *canvas.latent), generator=generator, device=gen_device, dtype=torch.float32)
                            for _ in range(settings.draws)]).to(device)
        views = [canvas, _mirrored(canvas)] if settings.mirror and settings.draws > 1 else [canvas]
        lr_latents = [{} for _ in views]  # the upsampled LR's latents, encoded once for both uses
        init = None
        if settings.start_strength < 1.0:
            init = torch.cat([_encode_lr_up(model, view, settings, latents) for view, latents in zip(views, lr_latents)])
        # 3. contexts and noise prediction; 4. the sampler's loop
        eps_fn = _make_eps_fn(model, views, refs, ref_mask, settings, ref_context, lr_latents)
        scheduler = make_scheduler(settings.sampler, model.scheduler_config)
        means = _mean_denoised(eps_fn, noises, scheduler, settings, generator, callback, disable, init, len(views))
        # 5. decode (each view's mean; the mirrored one mirrored back, then the mean weighted by
        # draws), crop the padding away, 6. colour fix against the upsampled input
        images = [(_decode(model, x, canvas, settings).clamp(-1.0, 1.0), n) for x, n in means]
        image = images[0][0]
        if len(images) > 1:
            image = (images[0][0] * images[0][1] + images[1][0].flip(-1) * images[1][1]) / settings.draws
    s = model_factors(model)[0]
    h, w = canvas.size[0] * s, canvas.size[1] * s
    image, up = image[:, :, :h, :w], canvas.lr_up[:, :, :h, :w]
    return apply_color_fix(image.float(), up.float(), settings.color_fix, settings.color_fix_levels)
