"""`refsr evaluate` end to end: pairing, errors, report files, unavailable weights, --strict, --compare."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from refsr.io import write_image, write_jsonl
from refsr.metrics import fidelity, perceptual
from refsr.metrics.report import compare_reports, evaluate
from refsr_cli.main import cli


@pytest.fixture(autouse=True)
def no_weights(tmp_path, monkeypatch):
    """No pretrained weights anywhere: an empty torch hub cache and an empty ~/.cache/clip."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _small(img, w, h):
    return np.round(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) * 255).astype(np.float32) / 255


@pytest.fixture
def folders(tmp_path, astronaut, coffee):
    """gt/ with two real photos; pred/ with noisy versions named <stem>_sr.png; returns (pred, gt)."""
    rng = np.random.default_rng(0)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for name, img in [("astronaut", _small(astronaut, 64, 64)), ("coffee", _small(coffee, 80, 48))]:
        write_image(gt / f"{name}.png", img)
        write_image(pred / f"{name}_sr.png", np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1).astype(np.float32))
    return pred, gt


def run(*args):
    result = CliRunner().invoke(cli, ["-q", "evaluate", *map(str, args)])
    return result.exit_code, result.output


def test_report_and_csv_with_unavailable_metrics(folders, tmp_path):
    pred, gt = folders
    code, out = run("--pred", pred, "--gt", gt, "-o", tmp_path / "r" / "report.json")
    assert code == 0, out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["format"] == "refsr.report/1" and report["images"] == 2
    m = report["metrics"]
    assert m["psnr"]["status"] == "ok" and m["psnr"]["count"] == 2 and m["psnr"]["infinite"] == 0
    for name, file in [("lpips", "alexnet-owt-7be5be79.pth"), ("clipiqa", "RN50.pt"), ("fid", "pt_inception-2015-12-05")]:
        assert m[name]["status"] == "unavailable" and file in m[name]["reason"] and "copy it to" in m[name]["reason"]
    s = report["settings"]
    assert (s["crop_border"], s["color"], s["suffix"]) == (0, "y", "_sr")
    assert {"torch", "lpips", "piq"} <= set(report["versions"])
    rows = list(csv.DictReader(open(tmp_path / "r" / "per_image.csv")))
    assert [r["name"] for r in rows] == ["astronaut", "coffee"] and set(rows[0]) == {"name", "pred", "gt", "psnr", "ssim"}
    # the numbers are the library's, on the files as read back
    from refsr.io import read_rgb

    t = lambda p: torch.from_numpy(read_rgb(p)).permute(2, 0, 1)[None]  # noqa: E731
    p, s_ = fidelity.psnr_ssim(t(pred / "coffee_sr.png"), t(gt / "coffee.png"))
    assert float(rows[1]["psnr"]) == pytest.approx(p.item(), abs=1e-9) and float(rows[1]["ssim"]) == pytest.approx(s_.item(), abs=1e-9)
    assert m["psnr"]["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    assert "unavailable" in out and "PSNR" in out


def test_strict_exits_1_when_weights_are_missing(folders, tmp_path):
    pred, gt = folders
    code, out = run("--pred", pred, "--gt", gt, "--strict", "-o", tmp_path / "report.json")
    assert code == 1 and "--strict" in out and "lpips" in out
    assert (tmp_path / "report.json").is_file()  # written before failing
    code, _ = run("--pred", pred, "--gt", gt, "--metrics", "psnr,ssim", "--strict", "-o", tmp_path / "b.json")
    assert code == 0


def test_identical_images_infinite_psnr_in_report(folders, tmp_path):
    pred, gt = folders
    (pred / "coffee_sr.png").write_bytes((gt / "coffee.png").read_bytes())
    code, out = run("--pred", pred, "--gt", gt, "--metrics", "psnr,ssim", "-o", tmp_path / "report.json")
    assert code == 0, out
    m = json.loads((tmp_path / "report.json").read_text())["metrics"]
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    assert rows[1]["psnr"] == "inf" and float(rows[1]["ssim"]) == 1.0
    assert m["psnr"]["infinite"] == 1 and m["psnr"]["count"] == 2
    assert m["psnr"]["mean"] == pytest.approx(float(rows[0]["psnr"]))  # mean over the finite values
    assert "excluded from the mean" in m["psnr"]["mean_of"] and "infinite PSNR" in out
    (pred / "astronaut_sr.png").write_bytes((gt / "astronaut.png").read_bytes())
    run("--pred", pred, "--gt", gt, "--metrics", "psnr", "-o", tmp_path / "all.json")
    all_same = json.loads((tmp_path / "all.json").read_text())["metrics"]["psnr"]
    assert all_same["mean"] is None and all_same["infinite"] == 2
    code, out = run("--compare", tmp_path / "report.json", tmp_path / "all.json")
    psnr_row = next(line for line in out.splitlines() if line.startswith("PSNR"))
    assert code == 0 and "inf" in psnr_row and "(better)" in psnr_row


def test_unpaired_files_are_all_listed(folders):
    pred, gt = folders
    write_image(pred / "extra_sr.png", np.zeros((8, 8, 3), np.float32))
    write_image(pred / "other.png", np.zeros((8, 8, 3), np.float32))
    write_image(gt / "lonely.png", np.zeros((8, 8, 3), np.float32))
    code, out = run("--pred", pred, "--gt", gt)
    assert code == 1
    line = out.strip().splitlines()[-1]
    assert "3 unpaired" in line and all(n in line for n in ("extra_sr.png", "other.png", "lonely.png"))


def test_size_mismatch_names_both_sizes(folders):
    pred, gt = folders
    write_image(pred / "coffee_sr.png", np.zeros((50, 80, 3), np.float32))
    code, out = run("--pred", pred, "--gt", gt, "--metrics", "psnr")
    assert code == 1 and "80x50" in out and "80x48" in out and "coffee_sr.png" in out and "coffee.png" in out


def test_suffix_optional_and_custom(folders):
    pred, gt = folders
    (pred / "coffee_sr.png").rename(pred / "coffee.png")  # no suffix pairs too
    code, out = run("--pred", pred, "--gt", gt, "--metrics", "psnr")
    assert code == 0, out
    (pred / "astronaut_sr.png").rename(pred / "astronaut-x4.png")
    code, out = run("--pred", pred, "--gt", gt, "--metrics", "psnr", "--suffix", "-x4", "--overwrite")
    assert code == 0, out


def test_manifest_gt_sets_crop_border_to_scale(folders, tmp_path):
    pred, gt = folders
    records = [{"id": n, "hr": f"gt/{n}.png", "lr": f"gt/{n}.png", "scale": 4, "source": n, "crop": [0, 0, 1, 1], "seed": 0,
                "degradation": {}} for n in ("astronaut", "coffee")]
    write_jsonl(tmp_path / "manifest.jsonl", records)
    code, out = run("--pred", pred, "--gt", tmp_path / "manifest.jsonl", "--metrics", "psnr,ssim", "-o", tmp_path / "m.json")
    assert code == 0, out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["settings"]["crop_border"] == 4 and report["settings"]["crop_border_source"] == "manifest scale"
    from refsr.io import read_rgb

    t = lambda p: torch.from_numpy(read_rgb(p)).permute(2, 0, 1)[None]  # noqa: E731
    expected = [fidelity.psnr(t(pred / f"{n}_sr.png"), t(gt / f"{n}.png"), border=4).item() for n in ("astronaut", "coffee")]
    assert report["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(expected))


def test_usage_errors_exit_2(folders):
    pred, gt = folders
    assert run("--pred", pred, "--gt", gt, "--metrics", "psnr,brisque")[0] == 2  # unknown metric
    code, out = run("--pred", pred, "--metrics", "psnr")  # full-reference metric without --gt
    assert code == 2 and "--gt" in out
    assert run("--pred", pred, "--gt", gt, "--color", "lab")[0] == 2


def test_existing_report_is_kept_unless_overwrite(folders, tmp_path):
    pred, gt = folders
    out_json = tmp_path / "report.json"
    run("--pred", pred, "--gt", gt, "--metrics", "psnr", "-o", out_json)
    before = out_json.read_text()
    code, out = run("--pred", pred, "--gt", gt, "--metrics", "psnr", "-o", out_json)
    assert code == 0 and "--overwrite" in out and out_json.read_text() == before
    code, out = run("--pred", pred, "--gt", gt, "--metrics", "psnr", "--color", "rgb", "-o", out_json)
    assert code == 1 and "another request" in out and "color" in out and out_json.read_text() == before
    run("--pred", pred, "--gt", gt, "--metrics", "psnr,ssim", "-o", out_json, "--overwrite")
    assert "ssim" in json.loads(out_json.read_text())["metrics"]


def test_compare_side_by_side(folders, tmp_path):
    pred, gt = folders
    run("--pred", pred, "--gt", gt, "--metrics", "psnr,ssim", "-o", tmp_path / "a" / "report.json")
    run("--pred", gt, "--gt", gt, "--metrics", "psnr,ssim", "--crop-border", "2", "-o", tmp_path / "b" / "report.json")
    code, out = run("--compare", tmp_path / "a" / "report.json", tmp_path / "b" / "report.json", "--names", "LDM,LDM+CA")
    assert code == 0, out
    assert "LDM+CA" in out and "PSNR (Y, dB) ↑" in out and "SSIM (Y) ↑" in out
    ssim_row = next(line for line in out.splitlines() if line.startswith("SSIM"))
    assert "(better)" in ssim_row and "+" in ssim_row and "1.0000" in ssim_row
    assert "'crop_border' differs" in out
    assert run("--compare", tmp_path / "a" / "report.json")[0] == 2


def test_no_gt_runs_only_clipiqa_with_random_clip(folders, monkeypatch):
    from test_metrics import tiny_clipiqa

    pred, _ = folders
    result = evaluate(pred, None, models={"clipiqa": tiny_clipiqa(monkeypatch)}, device="cpu")
    m = result.report["metrics"]
    assert m["clipiqa"]["status"] == "ok" and m["clipiqa"]["count"] == 2 and 0 <= m["clipiqa"]["mean"] <= 1
    assert all(m[k] == {"status": "skipped", "reason": "needs ground truth (--gt)"} for k in ("psnr", "ssim", "lpips", "fid"))
    assert result.report["settings"]["weights"]["clipiqa"].startswith("supplied by the caller")


class TinyFeatures(torch.nn.Module):
    """A random stand-in for the Inception extractor (same interface: a list of (B, D, 1, 1))."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=2)

    def forward(self, x):
        return [torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)]


def test_all_metrics_with_random_networks(folders, tmp_path):
    """Plumbing with random backbones: identical sets give LPIPS 0 and FID ~0."""
    pred, gt = folders
    models = {"lpips": perceptual.build_lpips("alex", None), "fid": TinyFeatures()}
    same = evaluate(gt, gt, metrics=["psnr", "lpips", "fid"], models=models, device="cpu", batch_size=1)
    m = same.report["metrics"]
    assert m["lpips"]["mean"] == 0.0 and abs(m["fid"]["value"]) < 1e-6 and m["psnr"]["infinite"] == 2
    assert "fewer" not in m["fid"]["warning"] and "< 50" in m["fid"]["warning"]
    diff = evaluate(pred, gt, metrics=["lpips", "fid"], models=models, device="cpu")
    assert diff.report["metrics"]["lpips"]["mean"] > 0 and diff.report["metrics"]["fid"]["value"] > 0
    assert all(r["lpips"] > 0 for r in diff.rows)
    text = compare_reports([same.report, diff.report], ["same", "noisy"])
    assert "LPIPS (alex) ↓" in text and "(worse)" in text
