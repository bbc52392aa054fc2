"""Tiling math, blending weights, padding, colour fix and schedulers of refsr.sample."""

from __future__ import annotations

import pytest
import torch

from refsr.sample.color_fix import adain_color_fix, apply_color_fix, luma_color_fix, wavelet_color_fix, wavelet_decompose
from refsr.sample.samplers import denoise, make_scheduler
from refsr.sample.tiling import Tile, blend_tiles, blend_weights, cut_tiles, lr_multiple, pad_to_multiple, ramp_1d, tile_grid, tile_starts

LDM_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0155,
                "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False}


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (33, 32, 4), (64, 16, 0), (17, 16, 15)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    for a, b in zip(starts, starts[1:]):
        assert b > a and a + tile - b >= overlap  # neighbours share at least `overlap` pixels


def test_tile_starts_single_and_bad_overlap():
    assert tile_starts(20, 32, 8) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 16, 16)


def test_ramp_is_smooth_and_never_zero():
    w = ramp_1d(32, 8)
    assert w.min() > 0 and w.max() == 1.0
    assert torch.all(w[:8].diff() > 0) and torch.all(w[8:24] == 1.0)
    assert torch.allclose(w, w.flip(0))


def test_normalised_weights_sum_to_one_and_single_tile_is_exactly_one():
    tiles = tile_grid(40, 70, 16, 5)
    weights = blend_weights(tiles, 40, 70, ramp=5)
    total = torch.zeros(40, 70, dtype=torch.float64)
    for t, w in zip(tiles, weights):
        total[t.slices()] += w[0, 0].double()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    (single,) = blend_weights([Tile(0, 0, 12, 12)], 12, 12, ramp=4)
    assert torch.equal(single, torch.ones_like(single))


@pytest.mark.parametrize("items", [1, 3])
def test_blend_tiles_reproduces_a_canvas_function(items):
    """Each item of a (B, C, H, W) canvas gets back its own pixels, whatever the batch of units
    (tile, item) per call; units come tile by tile, a tile's items together."""
    canvas = torch.randn(items, 3, 30, 50)
    tiles = tile_grid(30, 50, 16, 6)
    weights = blend_weights(tiles, 30, 50, ramp=6)
    seen = []
    fn = lambda units: seen.append(list(units)) or cut_tiles(canvas, tiles, units)  # noqa: E731
    for batch in (1, 4):
        seen.clear()
        assert torch.allclose(blend_tiles(fn, canvas.shape, tiles, weights, batch), canvas, atol=1e-6)
        order = [u for chunk in seen for u in chunk]
        assert order == [(k, b) for k in range(len(tiles)) for b in range(items)]
        assert all(len(chunk) == batch for chunk in seen[:-1]) and 0 < len(seen[-1]) <= batch


def test_lr_multiple_and_reflect_padding_round_trip():
    assert lr_multiple(scale=4, vq_factor=4, unet_factor=8) == 8
    assert lr_multiple(scale=2, vq_factor=4, unet_factor=4) == 8
    x = torch.rand(1, 3, 13, 22)
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (16, 24) and size == (13, 22)
    assert torch.equal(padded[:, :, :13, :22], x)
    assert torch.equal(padded[:, :, 13, :22], x[:, :, 11, :])  # reflect, not zeros or edge copy
    tiny, _ = pad_to_multiple(torch.rand(1, 3, 2, 2), 8)  # too small to reflect: replicate
    assert tiny.shape[-2:] == (8, 8)


def test_wavelet_split_is_exact_and_fix_takes_reference_colour(astronaut):
    img = torch.from_numpy(astronaut[::4, ::4].transpose(2, 0, 1).copy())[None] * 2 - 1
    high, low = wavelet_decompose(img)
    assert torch.allclose(high + low, img, atol=1e-5)
    shifted = (img + 0.3).clamp(-1, 1)  # a colour cast
    fixed = wavelet_color_fix(shifted, img)
    assert (fixed.mean() - img.mean()).abs() < 0.02 < (shifted.mean() - img.mean()).abs()
    _, low_fixed = wavelet_decompose(fixed)
    assert torch.allclose(low_fixed, low, atol=0.05)


@pytest.mark.parametrize("levels", [3, 4, 5])
def test_each_wavelet_level_less_takes_one_more_octave_of_the_input(levels):
    """What the fix takes from the input is the a-trous low band: a detail of period P that the
    output adds to the input is kept in the proportion 1 - prod_i (1 + cos(2 pi 2^i / P)) / 2, over
    the levels' dilations 2^i. A period of 32 px is wholly the output's with StableSR's 5 levels
    (the fifth blur, dilation 16, removes it from the low band) and partly the input's with fewer."""
    import math

    x = torch.arange(256, dtype=torch.float64)
    reference = torch.zeros(1, 3, 8, 256, dtype=torch.float64)
    detail = 0.2 * torch.cos(2 * math.pi * x / 32).expand(1, 3, 8, 256)
    fixed = wavelet_color_fix(reference + detail, reference, levels)
    low_gain = math.prod((1 + math.cos(2 * math.pi * 2**i / 32)) / 2 for i in range(levels))
    inner = slice(64, 192)  # away from the replicated borders
    assert torch.allclose(fixed[..., inner], detail[..., inner] * (1 - low_gain), atol=1e-9)
    assert (low_gain == 0) == (levels == 5)
    luma = apply_color_fix((reference + detail).float(), reference.float(), "luma", levels=levels)
    assert torch.allclose(luma[..., inner], fixed[..., inner].float(), atol=1e-6)  # a grey detail: luma only


def _ycbcr(rgb01):
    """MATLAB rgb2ycbcr (BT.601) of (B, 3, H, W) RGB in [0, 1], written out here on its own."""
    r, g, b = rgb01[:, 0], rgb01[:, 1], rgb01[:, 2]
    return torch.stack([16 + 65.481 * r + 128.553 * g + 24.966 * b,
                        128 - 37.797 * r - 74.203 * g + 112.0 * b,
                        128 + 112.0 * r - 93.786 * g - 18.214 * b], 1)


def test_luma_fix_keeps_the_wavelet_luma_and_takes_the_inputs_chroma(astronaut):
    """The model's detail in the luma (as the wavelet fix leaves it), the input's colour: a
    restoration that lost most of its saturation gets the input's Cb and Cr back, pixel by pixel,
    and its Y channel (what Y-PSNR scores) is exactly the wavelet fix's."""
    torch.manual_seed(0)
    img = torch.from_numpy(astronaut[::4, ::4].transpose(2, 0, 1).copy()).double()[None] * 1.6 - 0.8  # no clipping
    grey = img.mean(1, keepdim=True)
    washed = grey + 0.3 * (img - grey) + 0.05 * torch.randn_like(img)  # 70 % of the saturation gone, new detail
    fixed, wavelet = luma_color_fix(washed, img), wavelet_color_fix(washed, img)
    y_fixed, y_wavelet, y_ref = (_ycbcr((t + 1) / 2) for t in (fixed, wavelet, img))
    assert torch.allclose(y_fixed[:, 0], y_wavelet[:, 0], atol=1e-9)
    assert torch.allclose(y_fixed[:, 1:], y_ref[:, 1:], atol=1e-9)
    assert (y_wavelet[:, 1:] - y_ref[:, 1:]).abs().mean() > 5  # what the wavelet fix alone leaves (0-255 scale)
    assert torch.equal(apply_color_fix(washed, img, "luma"), fixed.clamp(-1, 1))


def test_adain_matches_channel_statistics_and_none_is_identity():
    out, ref = torch.randn(1, 3, 20, 20) * 0.2 + 0.4, torch.randn(1, 3, 20, 20) * 0.5 - 0.1
    fixed = adain_color_fix(out, ref)
    assert torch.allclose(fixed.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(fixed.std(dim=(2, 3)), ref.std(dim=(2, 3)), atol=1e-3)
    assert apply_color_fix(out, ref, "none") is out
    with pytest.raises(ValueError, match="wavelet"):
        apply_color_fix(out, ref, "histogram")


@pytest.mark.parametrize("name,cls", [("ddim", "DDIMScheduler"), ("dpmpp", "DPMSolverMultistepScheduler"), ("ddpm", "DDPMScheduler")])
def test_make_scheduler_keeps_the_model_schedule(name, cls):
    sched = make_scheduler(name, {**LDM_SCHEDULE, "_class_name": "DDPMScheduler", "unknown_key": 1})
    assert type(sched).__name__ == cls
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.beta_start == 0.0015
    assert torch.allclose(sched.betas[[0, -1]], torch.tensor([0.0015, 0.0155]), atol=1e-6)


def test_make_scheduler_rejects_unknown_name():
    with pytest.raises(ValueError, match="ddim, dpmpp, ddpm"):
        make_scheduler("euler", LDM_SCHEDULE)


def test_denoise_with_oracle_noise_recovers_x0():
    """With the true noise as prediction, DDIM (eta 0) returns x0 exactly-ish (Eq. 12)."""
    sched = make_scheduler("ddim", LDM_SCHEDULE)
    x0, eps = torch.randn(1, 3, 8, 8) * 0.5, torch.randn(1, 3, 8, 8)
    sched.set_timesteps(4)
    a_t = sched.alphas_cumprod[sched.timesteps[0]]
    x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    steps_seen = []
    out = denoise(lambda x, t: eps, x_t / sched.init_noise_sigma, sched, 4, callback=lambda d: steps_seen.append(d["i"]))
    assert steps_seen == [0, 1, 2, 3]
    assert torch.allclose(out, x0, atol=1e-4)
