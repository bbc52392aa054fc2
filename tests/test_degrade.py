"""refsr.degrade: kernels, ops, the parameter sampler, the two executors, the file pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from refsr.degrade import kernels, ops
from refsr.degrade.numpy_exec import degrade_image
from refsr.degrade.params import list_presets, resolve_config, sample_params
from refsr.errors import InputError

N_DRAWS = 5000


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("size", [7, 13, 21])
def test_gaussian_family_sums_to_one_with_symmetry(size):
    iso = kernels.bivariate_gaussian(size, 2.0, 2.0, 0.0)
    aniso = kernels.bivariate_gaussian(size, 2.5, 0.7, 0.6)
    gen = kernels.bivariate_generalized_gaussian(size, 1.5, 1.5, 0.0, 0.7)
    plat = kernels.bivariate_plateau(size, 1.2, 2.0, -1.0, 1.5)
    for k in (iso, aniso, gen, plat):
        assert k.shape == (size, size) and k.dtype == np.float32
        assert abs(float(k.sum()) - 1.0) < 1e-5
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)  # point symmetry of every kernel
    for k in (iso, gen):  # isotropic: mirror and transpose symmetric, peak at the centre
        np.testing.assert_allclose(k, k.T, atol=1e-7)
        np.testing.assert_allclose(k, k[::-1], atol=1e-7)
        assert k.argmax() == (size * size) // 2
    assert not np.allclose(aniso, aniso.T, atol=1e-4)  # a rotated anisotropic kernel is not


def test_anisotropic_rotation_by_pi_over_2_transposes():
    a = kernels.bivariate_gaussian(15, 3.0, 1.0, 0.0)
    b = kernels.bivariate_gaussian(15, 3.0, 1.0, math.pi / 2)
    np.testing.assert_allclose(a, b.T, atol=1e-6)


@pytest.mark.parametrize("cutoff,size", [(math.pi / 3, 9), (2.0, 15), (math.pi / 5, 21)])
def test_sinc_kernel_matches_analytic_form(cutoff, size):
    k = kernels.circular_lowpass_kernel(cutoff, size)
    c = size // 2
    ii, jj = np.meshgrid(np.arange(size) - c, np.arange(size) - c, indexing="ij")
    r = np.sqrt(ii**2 + jj**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        analytic = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    analytic[c, c] = cutoff**2 / (4 * np.pi)  # the r -> 0 limit
    np.testing.assert_allclose(k, analytic / analytic.sum(), rtol=1e-4, atol=1e-7)
    assert abs(float(k.sum()) - 1) < 1e-5
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    padded = kernels.circular_lowpass_kernel(cutoff, size, pad_to=21)
    assert padded.shape == (21, 21) and abs(float(padded.sum()) - 1) < 1e-5


# ----------------------------------------------------------------------------- sampler


@pytest.fixture(scope="module")
def draws():
    cfg = resolve_config("realesrgan")
    return [sample_params(0, f"pair{i}", cfg) for i in range(N_DRAWS)]


def _close(fraction: float, p: float, n: int = N_DRAWS) -> bool:
    """Within 4.5 binomial standard deviations."""
    return abs(fraction - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9


def _frac(values, predicate) -> float:
    return sum(1 for v in values if predicate(v)) / len(values)


@pytest.mark.parametrize("stage,sig_hi", [("stage1", 3.0), ("stage2", 1.5)])
def test_sampler_blur_statistics(draws, stage, sig_hi):
    blurs = [d[stage]["blur"] for d in draws if d[stage]["blur"] is not None]
    assert _close(_frac(blurs, lambda b: b["type"] == "sinc"), 0.1, len(blurs))
    assert {b["size"] for b in blurs} == set(range(7, 22, 2))
    assert all(_close(_frac(blurs, lambda b, s=s: b["size"] == s), 1 / 8, len(blurs)) for s in range(7, 22, 2))
    gauss = [b for b in blurs if b["type"] != "sinc"]
    for kind, p in zip(kernels.KERNEL_TYPES, [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]):
        assert _close(_frac(gauss, lambda b: b["type"] == kind), p, len(gauss)), kind
    assert all(0.2 <= b["sigma_x"] <= sig_hi and 0.2 <= b["sigma_y"] <= sig_hi for b in gauss)
    assert all(b["sigma_x"] == b["sigma_y"] and b["theta"] == 0 for b in gauss if b["type"].endswith("_iso") or b["type"] == "iso")
    assert all(-math.pi <= b["theta"] <= math.pi for b in gauss)
    gen = [b["beta"] for b in gauss if b["type"].startswith("generalized")]
    plat = [b["beta"] for b in gauss if b["type"].startswith("plateau")]
    assert min(gen) >= 0.5 and max(gen) <= 4 and _close(_frac(gen, lambda x: x < 1), 0.5, len(gen))
    assert min(plat) >= 1 and max(plat) <= 2
    for b in blurs:
        if b["type"] == "sinc":
            low = math.pi / 3 if b["size"] < 13 else math.pi / 5
            assert low <= b["cutoff"] <= math.pi
    small = [b["cutoff"] for b in blurs if b["type"] == "sinc" and b["size"] >= 13]
    assert min(small) < math.pi / 3  # the wider range is used for large kernels


@pytest.mark.parametrize("stage,probs,lo,hi", [("stage1", (0.2, 0.7, 0.1), 0.15, 1.5), ("stage2", (0.3, 0.4, 0.3), 0.3, 1.2)])
def test_sampler_resize_statistics(draws, stage, probs, lo, hi):
    rs = [d[stage]["resize"] for d in draws]
    for direction, p in zip(("up", "down", "keep"), probs):
        assert _close(_frac(rs, lambda r: r["direction"] == direction), p)
    assert all(1 <= r["factor"] <= hi for r in rs if r["direction"] == "up")
    assert all(lo <= r["factor"] <= 1 for r in rs if r["direction"] == "down")
    assert all(r["factor"] == 1 for r in rs if r["direction"] == "keep")
    for mode in ops.RESIZE_MODES:
        assert _close(_frac(rs, lambda r: r["mode"] == mode), 1 / 3)


@pytest.mark.parametrize("stage,sigma_hi,poisson_hi", [("stage1", 30, 3.0), ("stage2", 25, 2.5)])
def test_sampler_noise_and_jpeg_statistics(draws, stage, sigma_hi, poisson_hi):
    ns = [d[stage]["noise"] for d in draws]
    assert _close(_frac(ns, lambda n: n["kind"] == "gaussian"), 0.5)
    assert _close(_frac(ns, lambda n: n["gray"]), 0.4)
    sig = [n["sigma"] for n in ns if n["kind"] == "gaussian"]
    sc = [n["scale"] for n in ns if n["kind"] == "poisson"]
    assert 1 <= min(sig) < 1.5 and sigma_hi - 0.5 < max(sig) <= sigma_hi
    assert 0.05 <= min(sc) < 0.1 and poisson_hi - 0.1 < max(sc) <= poisson_hi
    q = [d[stage]["jpeg"]["quality"] for d in draws] + [d["final"]["jpeg"]["quality"] for d in draws]
    assert min(q) == 30 and max(q) == 94 and all(isinstance(v, int) for v in q)  # int(U(30, 95))
    assert len({n["seed"] for n in ns}) == N_DRAWS


def test_sampler_second_blur_final_sinc_and_order(draws):
    assert _close(_frac(draws, lambda d: d["stage2"]["blur"] is not None), 0.8)
    fin = [d["final"] for d in draws]
    assert _close(_frac(fin, lambda f: f["sinc"] is not None), 0.8)
    assert _close(_frac(fin, lambda f: f["order"] == "resize_sinc_jpeg"), 0.5)
    sincs = [f["sinc"] for f in fin if f["sinc"]]
    assert all(math.pi / 3 <= s["cutoff"] <= math.pi and s["size"] in range(7, 22, 2) for s in sincs)
    for mode in ops.RESIZE_MODES:
        assert _close(_frac(fin, lambda f: f["resize_mode"] == mode), 1 / 3)


def test_sampler_is_pure_and_json_serialisable():
    import json

    cfg = resolve_config("realesrgan")
    a = sample_params(7, "x_0", cfg)
    assert a == sample_params(7, "x_0", cfg) == json.loads(json.dumps(a))
    assert a != sample_params(8, "x_0", cfg) and a != sample_params(7, "x_1", cfg)
    # a stage-2 override leaves stage-1 draws unchanged (separate streams)
    b = sample_params(7, "x_0", resolve_config("realesrgan", {"noise_range2": [5, 6]}))
    assert b["stage1"] == a["stage1"] and 5 <= b["stage2"]["noise"].get("sigma", 5) <= 6


def test_presets_and_config_errors(tmp_path):
    assert {"realesrgan", "bicubic"} <= set(list_presets())
    with pytest.raises(ValueError, match="available: bicubic, realesrgan"):
        resolve_config("nope")
    with pytest.raises(InputError, match="unknown parameter 'sinc_probability'.*valid: .*sinc_prob"):
        resolve_config("realesrgan", {"sinc_probability": 0.2})
    bad = tmp_path / "p.json"
    bad.write_text('{"jpeg_range": 50}')
    with pytest.raises(InputError, match=r"p\.json: parameter 'jpeg_range' must be a list"):
        resolve_config("realesrgan", bad)
    assert resolve_config("realesrgan", usm=True)["usm"] is True
    no_sinc = resolve_config("realesrgan", {"final_sinc_prob": 0.0})
    assert all(sample_params(0, str(i), no_sinc)["final"]["sinc"] is None for i in range(50))


# ----------------------------------------------------------------------------- ops


@pytest.fixture(scope="module")
def crop128(astronaut):
    return np.ascontiguousarray(astronaut[100:228, 150:278])


@pytest.mark.parametrize("sigma", [3.0, 20.0])
def test_gaussian_noise_std_matches_sigma(sigma):
    rng = np.random.default_rng(0)
    noise = ops.generate_gaussian_noise((256, 256, 3), sigma, False, rng)
    assert abs(noise.std() * 255 / sigma - 1) < 0.01 and abs(noise.mean()) < 1e-3
    gray = ops.generate_gaussian_noise((256, 256, 3), sigma, True, rng)
    assert abs(gray.std() * 255 / sigma - 1) < 0.02
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # one field for all channels
    mid = np.full((256, 256, 3), 0.5, np.float32)
    added = ops.add_gaussian_noise(mid, sigma, False, np.random.default_rng(1))
    assert abs((added - mid).std() * 255 / sigma - 1) < 0.01


def test_poisson_noise_levels_and_scale(crop128):
    a = ops.generate_poisson_noise(crop128, 1.0, False, np.random.default_rng(3))
    b = ops.generate_poisson_noise(crop128, 2.0, False, np.random.default_rng(3))
    np.testing.assert_allclose(b, 2 * a, atol=1e-6)  # scale multiplies the same realisation
    q = np.round(crop128 * 255)
    vals = 2 ** math.ceil(math.log2(len(np.unique(q))))
    x = q / 255
    # shot noise: variance x / vals per pixel (Poisson(x vals) / vals)
    assert abs(float((a**2).mean()) / float(x.mean() / vals) - 1) < 0.05
    g = ops.generate_poisson_noise(crop128, 1.0, True, np.random.default_rng(3))
    np.testing.assert_array_equal(g[..., 0], g[..., 1])


def test_jpeg_error_decreases_with_quality(crop128):
    errors = [float(np.abs(ops.add_jpg_compression(crop128, q) - crop128).mean()) for q in (10, 30, 50, 70, 90, 95)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    out = ops.add_jpg_compression(np.clip(crop128 * 1.5 - 0.2, -1, 2), 90)  # input is clamped first
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32


def test_usm_sharpens_edges_only(crop128):
    sharp = ops.usm_sharp(crop128)
    flat = np.full((64, 64, 3), 0.4, np.float32)
    np.testing.assert_allclose(ops.usm_sharp(flat), flat, atol=1e-6)
    lap = lambda im: float(np.abs(np.diff(im, axis=1)).mean())  # noqa: E731
    assert lap(sharp) > lap(crop128) * 1.05 and sharp.min() >= 0 and sharp.max() <= 1


def test_matlab_bicubic_weights_and_bicubic_preset(crop128):
    w = ops.matlab_bicubic_weights(128, 32)
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-5)
    const = np.full((64, 48, 3), 0.25, np.float32)
    params = sample_params(0, "c", resolve_config("bicubic"))
    hr, lr = degrade_image(const, params, 4)
    assert lr.shape == (16, 12, 3) and np.allclose(lr, round(0.25 * 255) / 255)
    _, lr = degrade_image(crop128, params, 4)  # close to a box average of the 4x4 blocks
    box = crop128.reshape(32, 4, 32, 4, 3).mean((1, 3))
    assert float(np.abs(lr - box).mean()) < 0.03


def test_numpy_executor_shapes_range_and_usm(crop128):
    cfg = resolve_config("realesrgan", usm=True)
    for i in range(8):
        p = sample_params(1, f"s{i}", cfg)
        hr, lr = degrade_image(crop128, p, 4)
        assert lr.shape == (32, 32, 3) and lr.dtype == np.float32 and 0 <= lr.min() and lr.max() <= 1
        np.testing.assert_array_equal(np.round(lr * 255), lr * np.float32(255))  # 8-bit levels
        np.testing.assert_allclose(hr, ops.usm_sharp(crop128), atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of scale 3"):
        degrade_image(crop128[:127], p, 3)


# ----------------------------------------------------------------------------- torch executor

# Stated bound. Blur, resize, sharpening and Gaussian noise agree to float rounding; the
# JPEG codecs differ (libjpeg's integer DCT vs our float DCT in torch: about 0.85 / 255 mean
# per JPEG pass), and three JPEG passes compound, so for the whole pipeline:
# mean |LR_torch - LR_numpy| < 3 / 255 and 99th percentile < 24 / 255 (block edges). Poisson noise drawn
# after a JPEG step is another realisation (numpy's Poisson sampler consumes a variable
# number of random numbers, so one differing pixel changes the rest): same distribution only.
JPEG_MEAN_BOUND = 1.5 / 255
TORCH_MEAN_BOUND, TORCH_P99_BOUND = 3 / 255, 24 / 255


def test_torch_steps_match_numpy(crop128):
    import torch

    from refsr.degrade import torch_exec as T

    x = torch.from_numpy(crop128).permute(2, 0, 1)[None]
    back = lambda t: t[0].permute(1, 2, 0).numpy()  # noqa: E731
    k = kernels.bivariate_gaussian(21, 2.0, 0.8, 0.3)
    np.testing.assert_allclose(back(T.filter2d(x, k)), ops.filter2d(crop128, k), atol=1e-5)
    tiny = np.ascontiguousarray(crop128[:5, :6])  # kernel larger than the image: reflect-101 still
    np.testing.assert_allclose(back(T.filter2d(torch.from_numpy(tiny).permute(2, 0, 1)[None], k)), ops.filter2d(tiny, k), atol=1e-5)
    for mode in ops.RESIZE_MODES:
        for size in ((41, 41), (77, 90), (160, 150)):
            np.testing.assert_allclose(back(T.resize(x, size, mode)), ops.resize(crop128, size, mode), atol=1e-4, err_msg=f"{mode} {size}")
    usm = np.abs(back(T.usm_sharp(x)) - ops.usm_sharp(crop128))  # mask threshold may flip at a pixel
    assert usm.mean() < 1e-5 and usm.max() < 1e-2
    for q in (30, 60, 94):
        diff = np.abs(back(T.jpeg(x, q)) - ops.add_jpg_compression(crop128, q))
        assert diff.mean() < JPEG_MEAN_BOUND, (q, diff.mean() * 255)


def test_torch_and_numpy_executors_agree(astronaut):
    import json

    import torch

    from refsr.degrade.torch_exec import degrade_batch

    hr = np.stack([astronaut[i * 64 : i * 64 + 128, 100:228] for i in range(6)])
    cfg = resolve_config("realesrgan", usm=True)
    params = [sample_params(2, f"t{i}", cfg) for i in range(6)]
    drawn = [json.loads(json.dumps(p)) for p in params]
    for p in params:  # Gaussian noise: its realisation does not depend on the image
        p["stage1"]["noise"] = {"kind": "gaussian", "sigma": 12.0, "gray": False, "seed": 4}
        p["stage2"]["noise"] = {"kind": "gaussian", "sigma": 10.0, "gray": True, "seed": 5}
    lr_t, hr_t = degrade_batch(torch.from_numpy(hr).permute(0, 3, 1, 2), params, 4, noise_from_numpy=True, return_hr=True)
    assert lr_t.shape == (6, 3, 32, 32)
    lr_t = lr_t.permute(0, 2, 3, 1).numpy()
    for i, p in enumerate(params):
        hr_n, lr_n = degrade_image(hr[i], p, 4)
        np.testing.assert_allclose(hr_t[i].permute(1, 2, 0).numpy(), hr_n, atol=1e-5)
        diff = np.abs(lr_t[i] - lr_n)
        assert diff.mean() < TORCH_MEAN_BOUND and np.quantile(diff, 0.99) < TORCH_P99_BOUND, (i, diff.mean() * 255)
    # the drawn records (Poisson included) and torch's own noise: same distributions, other
    # realisations, so only close on average
    batch = torch.from_numpy(hr).permute(0, 3, 1, 2)
    for lr_other in (degrade_batch(batch, drawn, 4, noise_from_numpy=True), degrade_batch(batch, params, 4)):
        assert np.abs(lr_other.permute(0, 2, 3, 1).numpy() - lr_t).mean() < 10 / 255


# ----------------------------------------------------------------------------- batched torch executor
# degrade_batch runs every step on the whole batch; between the first and the last resize the
# images have their own sizes and share a canvas (image i in its top-left corner). Each step
# is checked against the same step on each image alone, with random values outside the images
# (never read); then the whole executor against saved outputs of the former per-image executor.


def _canvas(images, h, w, seed=0):
    """Images (3, h_i, w_i) in the top-left corners of a (B, 3, h, w) canvas filled with noise."""
    import torch

    canvas = torch.rand(len(images), 3, h, w, generator=torch.Generator().manual_seed(seed)) * 3 - 1
    for i, img in enumerate(images):
        canvas[i, :, : img.shape[1], : img.shape[2]] = img
    return canvas


@pytest.fixture(scope="module")
def ragged(crop128):
    import torch

    x = torch.from_numpy(crop128).permute(2, 0, 1)
    sizes = [(37, 52), (64, 64), (1, 9), (50, 17)]
    return [x[:, 10 * i : 10 * i + h, 5 * i : 5 * i + w].contiguous() for i, (h, w) in enumerate(sizes)], sizes


def test_torch_kernels_equal_numpy_kernels():
    from refsr.degrade.torch_exec import make_kernels

    specs = [{"type": t, "size": s, "sigma_x": 1.7, "sigma_y": 0.6 if "aniso" in t else 1.7,
              "theta": 0.8 if "aniso" in t else 0.0, "beta": 1.3 if t[0] in "gp" else None}
             for t, s in zip(kernels.KERNEL_TYPES, (7, 21, 9, 13, 11, 15))]
    specs += [{"type": "sinc", "size": 13, "cutoff": 1.1}, {"type": "sinc", "size": 21, "cutoff": 2.9}, None]
    got = make_kernels(specs).numpy()
    assert got.shape == (9, 21, 21)
    for spec, k in zip(specs, got):
        want = np.zeros((21, 21), np.float32)
        size = spec["size"] if spec else 1
        want[10 - size // 2 : 11 + size // 2, 10 - size // 2 : 11 + size // 2] = kernels.make_kernel(spec) if spec else 1
        np.testing.assert_allclose(k, want, atol=1e-7, err_msg=str(spec))


def test_ragged_blur_and_resize_equal_each_image_alone(ragged):
    import torch

    from refsr.degrade import torch_exec as T
    from refsr.degrade.torch_exec import make_kernels

    images, sizes = ragged
    canvas = _canvas(images, 64, 64)
    specs = [{"type": "aniso", "size": 9, "sigma_x": 2.0, "sigma_y": 0.7, "theta": 0.4, "beta": None},
             {"type": "sinc", "size": 21, "cutoff": 1.3}, {"type": "iso", "size": 7, "sigma_x": 1.0, "sigma_y": 1.0, "theta": 0.0, "beta": None}, None]
    blurred = T.blur(canvas, specs, sizes)
    for i, (img, spec) in enumerate(zip(images, specs)):
        alone = T.filter2d(img[None], kernels.make_kernel(spec)) if spec else img[None]
        torch.testing.assert_close(blurred[i : i + 1, :, : sizes[i][0], : sizes[i][1]], alone, atol=1e-5, rtol=0)
    for modes in (["area", "bilinear", "bicubic", "area"], ["bicubic", "area", "bilinear", "bilinear"]):
        out_sizes = [(20, 71), (64, 64), (5, 3), (80, 1)]  # down, same size (copied exactly), up, mixed
        out = T.resize_ragged(canvas, sizes, out_sizes, modes)
        assert out.shape == (4, 3, 80, 71)
        for i, (img, (h, w), mode) in enumerate(zip(images, out_sizes, modes)):
            torch.testing.assert_close(out[i : i + 1, :, :h, :w], T.resize(img[None], (h, w), mode), atol=1e-5, rtol=0)
            assert not out[i, :, h:].any() and not out[i, :, :, w:].any()
        assert torch.equal(out[1, :, :64, :64], images[1])


def test_ragged_noise_and_jpeg_equal_each_image_alone(ragged):
    import torch

    from refsr.degrade import torch_exec as T

    images, sizes = ragged
    canvas = _canvas(images, 64, 64).clamp(0, 1)
    records = [{"kind": "gaussian", "sigma": 9.0, "gray": True, "seed": 1}, {"kind": "poisson", "scale": 1.5, "gray": False, "seed": 2},
               {"kind": "poisson", "scale": 0.7, "gray": True, "seed": 3}, {"kind": "gaussian", "sigma": 20.0, "gray": False, "seed": 4}]
    noisy = T.add_noise(canvas, records, sizes)
    coded = T.jpeg(canvas, [30, 95, 60, 75], sizes)
    for i, (img, rec, q) in enumerate(zip(images, records, [30, 95, 60, 75])):
        h, w = sizes[i]
        # same draw from the record's seed; Poisson levels counted inside the image only
        assert torch.equal(noisy[i : i + 1, :, :h, :w], T.add_noise(img[None], [rec]))
        assert torch.equal(coded[i : i + 1, :, :h, :w], T.jpeg(img[None], q))  # MCU padding per image


def test_batched_executor_equals_the_per_image_executor(astronaut):
    """Saved outputs of the per-image torch executor (tests/data/degrade_torch_per_image.npz, made
    by the executor of commit c5750f0 on the x86 CPU here: 12 Real-ESRGAN records covering every
    branch, Gaussian and Poisson noise, usm, and 2 bicubic records). Here all 14 are
    bit-identical. Elsewhere (another CPU, BLAS) a float rounding difference can flip one 8-bit
    level before a JPEG step and so change a few 8x8 blocks downstream, hence the bounds."""
    import json
    from pathlib import Path

    import torch

    from refsr.degrade.torch_exec import degrade_batch, usm_sharp

    saved = np.load(Path(__file__).parent / "data" / "degrade_torch_per_image.npz")
    params = json.loads(str(saved["params"]))
    hr = np.stack([astronaut[y : y + s, x : x + s] for y, x, s in saved["boxes"]])
    lr, target = degrade_batch(torch.from_numpy(hr).permute(0, 3, 1, 2), params, 4, return_hr=True)
    lr8 = np.round(lr.permute(0, 2, 3, 1).numpy() * 255).astype(np.int16)
    diff = np.abs(lr8 - saved["lr"].astype(np.int16))
    identical = [bool((d == 0).all()) for d in diff]
    assert sum(identical) >= len(params) - 2, identical
    assert diff.mean() < 0.1 and (diff > 0).mean() < 0.02 and diff.mean(axis=(1, 2, 3)).max() < 1.0
    for i, p in enumerate(params):  # the HR targets: unsharp-masked exactly as alone
        alone = torch.from_numpy(hr[i : i + 1]).permute(0, 3, 1, 2)
        assert torch.equal(target[i : i + 1], usm_sharp(alone, **p["usm"]) if p["usm"] else alone)
