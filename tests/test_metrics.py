"""PSNR/SSIM against scikit-image, the BT.601 Y conversion, Fréchet distance, LPIPS/CLIP-IQA/FID plumbing."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from refsr.errors import MissingWeightsError
from refsr.metrics import fidelity, perceptual


def _crop(img: np.ndarray, size: int = 96) -> np.ndarray:
    """Resized to size x size and rounded to 8-bit levels, as a PNG file would hold it."""
    return np.round(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) * 255).astype(np.float32) / 255


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.round(img[:, :, ::-1] * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255


@pytest.fixture(scope="module")
def batch(astronaut, coffee):
    """Two real photos (ground truth) and degraded versions (JPEG, blur): (2, 3, 96, 96) in [0, 1]."""
    gt = [_crop(astronaut), _crop(coffee[:, 100:500])]
    pred = [_jpeg(gt[0], 30), cv2.GaussianBlur(gt[1], (5, 5), 1.2)]
    to_t = lambda imgs: torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return to_t(pred), to_t(gt)


def _y_numpy(img01: np.ndarray, border: int) -> np.ndarray:
    """Independent path: 8-bit rounding, BT.601 Y by the formula, crop, as (H, W) float64."""
    u8 = np.round(np.clip(img01.astype(np.float64), 0, 1) * 255)
    y = 16.0 + (65.481 * u8[..., 0] + 128.553 * u8[..., 1] + 24.966 * u8[..., 2]) / 255.0
    return y[border:-border, border:-border] if border else y


# ---------------------------------------------------------------------------------------- Y


def test_y_channel_is_bt601_formula_and_matches_skimage(astronaut):
    img = _crop(astronaut, 64)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() * 255
    y = fidelity.rgb_to_y(x)[0, 0].numpy()
    r, g, b = (img[..., i].astype(np.float64) for i in range(3))
    np.testing.assert_allclose(y, 16 + 65.481 * r + 128.553 * g + 24.966 * b, atol=1e-4)
    np.testing.assert_allclose(y, rgb2ycbcr(img.astype(np.float64))[..., 0], atol=1e-4)
    extremes = fidelity.rgb_to_y(torch.tensor([0.0, 255.0], dtype=torch.float64).view(2, 1, 1, 1).expand(2, 3, 1, 1))
    assert extremes.flatten().tolist() == pytest.approx([16.0, 235.0], abs=1e-3)


# -------------------------------------------------------------------------------- PSNR/SSIM


@pytest.mark.parametrize("border", [0, 4])
def test_psnr_ssim_y_match_skimage(batch, border):
    pred, gt = batch
    p, s = fidelity.psnr_ssim(pred, gt, border=border, color="y")
    for i in range(2):
        y_pred = _y_numpy(pred[i].permute(1, 2, 0).numpy(), border)
        y_gt = _y_numpy(gt[i].permute(1, 2, 0).numpy(), border)
        assert p[i].item() == pytest.approx(peak_signal_noise_ratio(y_gt, y_pred, data_range=255), abs=1e-4)
        ref = structural_similarity(y_gt, y_pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        assert s[i].item() == pytest.approx(ref, abs=1e-4)
    assert 20 < p.min() < p.max() < 45 and 0.5 < s.min() < s.max() < 1.0  # sane values for real degradations


def test_psnr_ssim_rgb_match_skimage(batch):
    pred, gt = batch
    p = fidelity.psnr(pred, gt, border=2, color="rgb")
    s = fidelity.ssim(pred, gt, border=2, color="rgb")
    for i in range(2):
        a = fidelity.prepare(pred[i : i + 1], 2, "rgb")[0].permute(1, 2, 0).numpy()
        b = fidelity.prepare(gt[i : i + 1], 2, "rgb")[0].permute(1, 2, 0).numpy()
        assert np.array_equal(a, np.round(a)) and a.max() <= 255  # 8-bit values on the 0-255 scale
        assert p[i].item() == pytest.approx(peak_signal_noise_ratio(b, a, data_range=255), abs=1e-4)
        ref = structural_similarity(b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)
        assert s[i].item() == pytest.approx(ref, abs=1e-4)


def test_batched_equals_one_by_one(batch):
    pred, gt = batch
    p, s = fidelity.psnr_ssim(pred, gt, border=3)
    for i in range(2):
        pi, si = fidelity.psnr_ssim(pred[i : i + 1], gt[i : i + 1], border=3)
        assert pi.item() == pytest.approx(p[i].item(), abs=1e-9) and si.item() == pytest.approx(s[i].item(), abs=1e-9)


def test_float32_path_is_close_to_float64(batch):
    pred, gt = batch
    p64, s64 = fidelity.psnr_ssim(pred, gt, border=4)
    p32, s32 = fidelity.psnr_ssim(pred, gt, border=4, dtype=torch.float32)
    assert s32.dtype == torch.float32
    assert (s32.double() - s64).abs().max() < 1e-5 and (p32.double() - p64).abs().max() < 1e-3


def test_identical_images_give_infinite_psnr_and_unit_ssim(batch):
    _, gt = batch
    p, s = fidelity.psnr_ssim(gt, gt.clone())
    assert all(math.isinf(v) and v > 0 for v in p.tolist())
    assert s.tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_quantisation_makes_sub_level_noise_invisible(batch):
    _, gt = batch
    tiny = (gt + 0.1 / 255).clamp(0, 1)  # rounds back to the same 8-bit values where not clipped
    q = fidelity.quantize_8bit(gt)
    same = torch.round(q + 0.1) == torch.round(q)
    assert same.all()
    assert math.isinf(fidelity.psnr(tiny, gt)[0].item())
    assert math.isfinite(fidelity.psnr(tiny, gt, quantize=False)[0].item())


def test_bad_shapes_and_borders_are_errors(batch):
    pred, gt = batch
    with pytest.raises(ValueError, match="shapes differ"):
        fidelity.psnr(pred[:, :, :90], gt)
    with pytest.raises(ValueError, match="crop border 48"):
        fidelity.ssim(pred, gt, border=48)
    with pytest.raises(ValueError, match="at least 11x11"):
        fidelity.ssim(pred, gt, border=43)
    with pytest.raises(ValueError, match="y, rgb"):
        fidelity.psnr(pred, gt, color="lab")


# ------------------------------------------------------------------------------- Fréchet


def test_frechet_distance_closed_form_commuting_covariances():
    """Shared eigenvectors: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a, b = torch.tensor([4.0, 1.0, 0.25, 9.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0, 1.0, 4.0, 0.0, 3.0], dtype=torch.float64)
    mu1, mu2 = torch.zeros(6, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = perceptual.frechet_distance(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert perceptual.frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[9.0]])) == pytest.approx(4 + 1)


def test_frechet_distance_general_case_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)  # do not commute
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    assert perceptual.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_sampled_gaussians_approaches_closed_form():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    y = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2.0 + 1.0
    expected = 3 * 1.0 + (1 - 2) ** 2 + (2 - 2) ** 2 + (0.5 - 2) ** 2
    assert perceptual.fid_from_features(x, y) == pytest.approx(expected, rel=0.05)
    assert abs(perceptual.fid_from_features(x, x)) < 1e-8


def test_fid_low_rank_path_equals_covariance_path():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=g, dtype=torch.float64)
    y = torch.randn(12, 40, generator=g, dtype=torch.float64) * 1.5 + 0.3
    mu1, s1 = perceptual.feature_statistics(x)
    mu2, s2 = perceptual.feature_statistics(y)
    # (D, D) path: sqrt of ~1e-16 round-off eigenvalues of the rank-deficient product adds ~1e-6
    assert perceptual.fid_from_features(x, y) == pytest.approx(perceptual.frechet_distance(mu1, s1, mu2, s2), abs=1e-5)


# ------------------------------------------------------------------------ LPIPS / FID nets


def test_lpips_random_trunk_plumbing(batch):
    pred, gt = batch
    model = perceptual.build_lpips("alex", trunk_state=None)
    same = perceptual.lpips_distance(model, gt, gt)
    assert same.tolist() == [0.0, 0.0]
    d = perceptual.lpips_distance(model, pred, gt)
    assert d.shape == (2,) and (d > 0).all()
    assert perceptual.lpips_distance(model, gt, pred).tolist() == pytest.approx(d.tolist(), rel=1e-5)  # symmetric
    assert perceptual.lpips_distance(model, pred[1:], gt[1:]).item() == pytest.approx(d[1].item(), rel=1e-5)


def test_lpips_loader_reads_the_hub_cache_with_our_trunk(tmp_path, monkeypatch):
    """The real loader path: a torchvision AlexNet checkpoint placed in the hub cache is used."""
    from torchvision import models

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        perceptual.load_lpips("alex")
    state = models.alexnet(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth")
    model = perceptual.load_lpips("alex")
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").bias, state["features.10.bias"])
    shipped = torch.load(perceptual.Path(__import__("lpips").__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, shipped["lin0.model.1.weight"])  # calibrated linear layers loaded


def test_missing_weights_messages_name_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    for loader, name in [(lambda: perceptual.load_lpips("vgg"), "vgg16-397923af.pth"),
                         (perceptual.load_clipiqa, "RN50.pt"),
                         (perceptual.load_fid_inception, "pt_inception-2015-12-05-6726825d.pth")]:
        with pytest.raises(MissingWeightsError) as e:
            loader()
        assert name in str(e.value) and "copy it to" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists()  # nothing was downloaded or created


def tiny_clipiqa(monkeypatch):
    """piq.CLIPIQA built by piq's own constructor around a tiny randomly initialised CLIP."""
    import piq
    from piq.feature_extractors.clip import CLIP

    torch.manual_seed(0)
    clip = CLIP(embed_dim=16, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8, vision_patch_size=None,
                context_length=6, vocab_size=20, transformer_width=16, transformer_heads=2, transformer_layers=1).float()
    tokens = torch.tensor([[1, 5, 7, 19, 0, 0], [1, 6, 7, 19, 0, 0]])  # "good photo." / "bad photo." stand-ins (19 = end token)
    monkeypatch.setattr(piq.clip_iqa.clip, "load", lambda: clip)
    monkeypatch.setattr(piq.clip_iqa, "download_tensor", lambda url, root, map_location="cpu": tokens)
    return piq.CLIPIQA(data_range=1.0).eval()


def test_clipiqa_random_clip_plumbing(batch, monkeypatch):
    pred, gt = batch
    model = tiny_clipiqa(monkeypatch)
    scores = perceptual.clipiqa_score(model, gt)
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    assert perceptual.clipiqa_score(model, gt.clone()).tolist() == scores.tolist()  # same image, same score
    assert perceptual.clipiqa_score(model, gt[1:]).item() == pytest.approx(scores[1].item(), abs=1e-6)


def test_fid_random_inception_self_is_zero(batch):
    pred, gt = batch
    net = perceptual.build_fid_inception(None)
    feats = perceptual.inception_features(net, torch.cat([gt, pred]))
    assert feats.shape == (4, 2048)
    assert abs(perceptual.fid_from_features(feats, feats.clone())) < 1e-6
    assert perceptual.fid_from_features(feats[:2], feats[2:]) > 0
