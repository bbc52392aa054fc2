"""NIQE (refsr.metrics.niqe): equal to BasicSR's within 1e-3 on real photos, sizes, flat
images, and `refsr evaluate --metrics niqe` (report, CSV, no ground truth, errors, compare)."""

from __future__ import annotations

import csv
import hashlib
import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import skimage_photo

from refsr.io import read_image, write_image
from refsr.metrics import niqe as nq
from refsr.metrics.report import compare_reports, evaluate
from refsr_cli.main import cli

# Frozen once from BasicSR 1.4.2 (`pip download basicsr==1.4.2 --no-deps`, the sdist unpacked
# in /tmp; its basicsr/metrics/niqe.py imported from the file, with stubs for its package
# imports (registry, utils) and its own color_util/matlab_functions/metric_util; numpy 2.4,
# scipy 1.17, torch 2.14 CPU): calculate_niqe(img[..., ::-1], border, input_order='HWC',
# convert_to='y') on the uint8 arrays of `_image` (BGR for colour, the 2-d array for gray).
BASICSR = {
    ("astronaut", "photo", 0): 3.0649476661849033,
    ("astronaut", "photo", 4): 2.991296048454476,
    ("astronaut", "bicubic_x4", 0): 7.2368241122505745,
    ("astronaut", "bicubic_x4", 4): 7.202970184772213,
    ("coffee", "photo", 0): 4.115241615372864,
    ("coffee", "photo", 4): 4.079406018889288,
    ("coffee", "bicubic_x4", 0): 7.552512970785502,
    ("coffee", "bicubic_x4", 4): 7.514165422671352,
    ("chelsea", "photo", 0): 2.625524381291432,
    ("chelsea", "photo", 4): 2.6893133463073955,
    ("chelsea", "bicubic_x4", 0): 7.669869379268621,
    ("chelsea", "bicubic_x4", 4): 7.702471507686298,
    ("camera", "photo", 0): 3.155215748805674,
    ("camera", "photo", 4): 3.146669142846539,
    ("camera", "bicubic_x4", 0): 7.680033067715356,
    ("camera", "bicubic_x4", 4): 7.679317516325482,
    ("motorcycle_left", "photo", 0): 2.672493064490275,
    ("motorcycle_left", "photo", 4): 2.6830497219634073,
    ("motorcycle_left", "bicubic_x4", 0): 7.410209737691032,
    ("motorcycle_left", "bicubic_x4", 4): 7.244200173556764,
    ("camera_gray", "photo", 0): 3.0962066193457405,
    ("camera_gray", "photo", 4): 3.0465181612260372,
    ("camera_gray", "bicubic_x4", 0): 7.610300989419156,
    ("camera_gray", "bicubic_x4", 4): 7.659394882604952,
}
# sha256 (first 16 hex digits) of the uint8 pixels the values above were computed on.
PIXELS = {
    ("astronaut", "photo"): "a8c429c18afa7b0f", ("astronaut", "bicubic_x4"): "44e84f1772521682",
    ("coffee", "photo"): "0ce2b51640b9c95f", ("coffee", "bicubic_x4"): "cac417419557740a",
    ("chelsea", "photo"): "416b729128bfb2c3", ("chelsea", "bicubic_x4"): "8ac604cdb7aa3d8b",
    ("camera", "photo"): "13e2b4aa92cb1649", ("camera", "bicubic_x4"): "6872b2c6845a6866",
    ("motorcycle_left", "photo"): "ca829467c1d4f427", ("motorcycle_left", "bicubic_x4"): "071a4fc3733cdc7e",
    ("camera_gray", "photo"): "5cb24482a53416f9", ("camera_gray", "bicubic_x4"): "dbb006d7d0abd0bc",
}
PARAMS_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"  # BasicSR 1.4.2's file


def _image(name: str, kind: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB, or (H, W) for camera_gray; ``bicubic_x4``: 4x4 box average, rounded,
    then OpenCV bicubic x4 (a degraded, upsampled photo)."""
    from skimage import data

    img = data.camera() if name == "camera_gray" else np.round(skimage_photo(name) * 255).astype(np.uint8)
    if kind == "bicubic_x4":
        h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
        lr = img[:h, :w].reshape(h // 4, 4, w // 4, 4, *img.shape[2:]).mean(axis=(1, 3))
        img = cv2.resize(np.round(lr).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    assert hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()[:16] == PIXELS[name, kind], "input pixels changed"
    return img


def _tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W[, 3]) -> (1, 3 or 1, H, W) float32 in [0, 1]."""
    x = torch.from_numpy(img.astype(np.float32) / 255)
    return x.permute(2, 0, 1)[None] if img.ndim == 3 else x[None, None]


@pytest.mark.parametrize("name,kind,border", sorted(BASICSR))
def test_equals_basicsr_on_photos_and_bicubic_upsampled(name, kind, border):
    value = nq.niqe(_tensor(_image(name, kind)), border)
    assert value.dtype == torch.float64 and value.shape == (1,)
    assert value.item() == pytest.approx(BASICSR[name, kind, border], abs=1e-3)


def test_batch_equals_single_images_and_separates_bicubic():
    imgs = [_image("astronaut", "photo"), _image("astronaut", "bicubic_x4"), _image("camera", "photo")]
    batch = nq.niqe(torch.cat([_tensor(i) for i in imgs]), 4)
    single = torch.cat([nq.niqe(_tensor(i), 4) for i in imgs])
    assert torch.allclose(batch, single, rtol=0, atol=1e-12)
    assert batch[1] > batch[0] + 3  # bicubic upsampling is far less natural than the photo


def test_pristine_parameters_file():
    p = nq.pristine_params()
    assert p["mu"].shape == (36,) and p["cov"].shape == (36, 36) and p["window"].shape == (7, 7)
    assert np.allclose(np.outer(p["kernel"], p["kernel"]), p["window"], atol=1e-15)
    record = nq.params_record()
    assert record["sha256"] == PARAMS_SHA256 and "BasicSR 1.4.2" in record["source"]
    notice = (nq.PARAMS_FILE.parent / "NOTICE").read_text()
    assert PARAMS_SHA256 in notice and "Apache License, Version 2.0" in notice


def test_size_rule_and_flat_images():
    assert nq.size_problem(96, 192) is None and nq.size_problem(192, 96) is None
    msg = nq.size_problem(96, 96)
    assert "at least 2 blocks of 96x96" in msg and "96x96 (96x96 after the crop)" in msg
    assert "crop border of 5 px" in nq.size_problem(104, 200, 5) and "190x94 after the crop" in nq.size_problem(104, 200, 5)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        nq.niqe(torch.rand(1, 3, 100, 150))
    flat = torch.full((1, 3, 200, 300), 0.5)
    assert torch.isnan(nq.niqe(flat)).all()  # undefined, never a number


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    x = torch.cat([_tensor(_image("coffee", "photo")), _tensor(_image("coffee", "bicubic_x4"))])
    gpu = nq.niqe(x.cuda(), 4).cpu()
    assert torch.allclose(gpu, nq.niqe(x, 4), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# refsr evaluate
# ---------------------------------------------------------------------------------------


def run(*args):
    result = CliRunner().invoke(cli, ["-q", "evaluate", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture
def folders(tmp_path):
    """hr/ with two real photos (one gray), out/ with their bicubic x4 versions named <stem>_sr.png."""
    hr, out = tmp_path / "hr", tmp_path / "out"
    for name, file in (("coffee", "coffee"), ("camera_gray", "camera")):
        for folder, kind, stem in ((hr, "photo", file), (out, "bicubic_x4", f"{file}_sr")):
            write_image(folder / f"{stem}.png", _image(name, kind)[:384, :512].astype(np.float32) / 255)
    return out, hr


def _library_niqe(path, border):
    image = read_image(path)
    x = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
    return nq.niqe(x[:, :1] if image.gray else x, border).item()


def test_evaluate_writes_niqe_to_report_and_csv(folders, tmp_path):
    out, hr = folders
    code, text = run("--pred", out, "--gt", hr, "--metrics", "psnr,ssim,niqe", "--crop-border", "4")
    assert code == 0, text
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]["niqe"]
    assert m["status"] == "ok" and m["count"] == 2 and m["better"] == "lower"
    assert report["settings"]["niqe_params"]["sha256"] == PARAMS_SHA256 and "niqe" in report["settings"]["crop_applies_to"]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["name"] for r in rows] == ["camera", "coffee"] and set(rows[0]) == {"name", "pred", "gt", "psnr", "ssim", "niqe"}
    for r in rows:
        assert float(r["niqe"]) == pytest.approx(_library_niqe(r["pred"], 4), abs=1e-12)
    # the gray file is scored on its one channel, as BasicSR reads it (IMREAD_UNCHANGED)
    gray_value = nq.niqe(_tensor(_image("camera_gray", "bicubic_x4")[:384, :512]), 4).item()
    assert float(rows[0]["niqe"]) == pytest.approx(gray_value, abs=1e-12)
    assert m["mean"] == pytest.approx(np.mean([float(r["niqe"]) for r in rows]))
    assert "NIQE (Y) ↓" in text


def test_niqe_without_ground_truth_and_compare(folders, tmp_path):
    out, hr = folders
    code, text = run("--pred", out, "--metrics", "niqe", "-o", tmp_path / "sr.json")
    assert code == 0, text
    sr = json.loads((tmp_path / "sr.json").read_text())
    assert sr["gt"] is None and sr["settings"]["crop_border"] == 0 and list(sr["metrics"]) == ["niqe"]
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    assert float(rows[1]["niqe"]) == pytest.approx(_library_niqe(out / "coffee_sr.png", 0), abs=1e-12)
    assert run("--pred", hr, "--metrics", "niqe", "-o", tmp_path / "hr.json")[0] == 0
    code, text = run("--compare", tmp_path / "sr.json", tmp_path / "hr.json", "--names", "bicubic,HR")
    row = next(line for line in text.splitlines() if line.startswith("NIQE"))
    assert code == 0 and "NIQE (Y) ↓" in row and "(better)" in row and " -" in row  # lower NIQE for the HR photos


def test_too_small_image_is_an_error_naming_file_and_minimum(folders, tmp_path):
    out, _ = folders
    write_image(out / "tiny_sr.png", np.zeros((100, 150, 3), np.float32) + 0.5)
    code, text = run("--pred", out, "--metrics", "niqe", "-o", tmp_path / "r.json")
    assert code == 1 and "tiny_sr.png" in text and "at least 2 blocks of 96x96" in text and "150x100" in text
    assert not (tmp_path / "r.json").exists()
    # a crop border that leaves less than the minimum is the same error
    code, text = run("--pred", out, "--metrics", "niqe", "--crop-border", "200", "-o", tmp_path / "r.json")
    assert code == 1 and "crop border of 200 px" in text


def test_default_metrics_mark_niqe_not_computed_for_small_images(folders, tmp_path, monkeypatch):
    out, hr = folders
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no network weights: PSNR/SSIM/NIQE only
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for folder, stem in ((out, "tiny_sr"), (hr, "tiny")):
        write_image(folder / f"{stem}.png", np.random.default_rng(0).random((100, 150, 3), dtype=np.float32))
    result = evaluate(out, hr, metrics=None, device="cpu")
    entry = result.report["metrics"]["niqe"]
    assert entry["status"] == "not computed" and "tiny_sr.png" in entry["reason"] and "at least 2 blocks" in entry["reason"]
    assert result.report["metrics"]["psnr"]["count"] == 3 and "niqe" not in result.rows[0]
    assert "niqe_params" not in result.report["settings"]


def test_flat_prediction_is_an_error_not_a_nan_in_the_mean(tmp_path):
    write_image(tmp_path / "flat.png", np.full((200, 300, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"flat\.png: NIQE is undefined"):
        evaluate(tmp_path, None, metrics=["niqe"], device="cpu")


def test_compare_table_direction():
    reports = [{"metrics": {"niqe": {"status": "ok", "mean": v, "count": 1, "better": "lower"}}, "settings": {}, "images": 1}
               for v in (7.5, 4.25)]
    text = compare_reports(reports, ["bicubic", "restored"])
    assert "NIQE (Y) ↓" in text and "-3.2500 (better)" in text
