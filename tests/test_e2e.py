"""The full chain as users run it: scripts/pipeline.sh (the six commands) on tiny data with
tiny models, and `refsr demo` with the shipped model. Checks each stage's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from refsr import io

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `refsr`
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def hr_and_refs(tmp_path, astronaut, coffee, motorcycle_pair):
    """HR photos (two small real photos) and references (the other stereo view, a cat)."""
    from skimage import data

    left, right = motorcycle_pair
    hr, refs = tmp_path / "hr", tmp_path / "refs"
    io.write_image(hr / "motorcycle.png", cv2.resize(left[100:356, 200:456], (96, 96), interpolation=cv2.INTER_AREA))
    io.write_image(hr / "astronaut.png", cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA))
    io.write_image(refs / "motorcycle_right.png", cv2.resize(right, (185, 125), interpolation=cv2.INTER_AREA))
    io.write_image(refs / "chelsea.png", cv2.resize(data.chelsea().astype(np.float32) / 255, (90, 60)))
    return hr, refs


def test_pipeline_script_chains_the_six_stages(tmp_path, hr_and_refs):
    hr, refs = hr_and_refs
    work = tmp_path / "work"
    env = _env(DEVICE="cpu", CROP=64, CLIP_MODEL=ROOT / "tests/data/tiny-clip-vit.json", CLIP_PRETRAINED="none",
               MATCHER="none", PATCH=32, STRIDE=16, AE_STEPS=2, DIFF_STEPS=2, SAMPLE_STEPS=2, AE_LPIPS=0,
               REFSR_QUIET=1)
    cmd = ["bash", str(ROOT / "scripts/pipeline.sh"), str(hr), str(refs), str(work), "tiny"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deprecated" not in proc.stderr  # the script uses today's spelling of every command

    pairs = io.read_pair_manifest(work / "pairs/manifest.jsonl")
    assert len(pairs) == 2 and all(p["scale"] == 4 for p in pairs)
    assert io.read_rgb(pairs[0]["lr_path"]).shape == (16, 16, 3)
    index = json.loads((work / "refs.index/index.json").read_text())
    assert index["count"] == 2 and index["space"] == "cosine"
    matches = io.read_matches(work / "matches.jsonl")
    assert {m["id"] for m in matches} == {p["id"] for p in pairs}
    assert all(1 <= len(m["refs"]) <= 10 for m in matches)
    assert all(Path(r["path"]).name in {"motorcycle_right.png", "chelsea.png"} for m in matches for r in m["refs"])
    for run in ("vq", "ldm-ca"):
        assert (work / "runs" / run / "model").is_dir() and (work / "runs" / run / "metrics.jsonl").is_file()
    assert json.loads((work / "runs/ldm-ca/model/model_index.json").read_text())["kind"] == "ldm-ca"
    outs = sorted((work / "restored").glob("*_sr.png"))
    assert [p.name for p in outs] == sorted(f"{p['id']}_sr.png" for p in pairs)
    assert io.read_rgb(outs[0]).shape == (64, 64, 3)
    run_json = json.loads((work / "restored/run.json").read_text())
    assert all(rec["refs"] for rec in run_json["images"].values())  # each image used its matched fragments
    report = json.loads((work / "report.json").read_text())
    assert report["metrics"]["psnr"]["count"] == 2 and np.isfinite(report["metrics"]["psnr"]["mean"])
    assert "unavailable" in json.dumps(report["metrics"].get("lpips", {"unavailable": 1}))

    # a rerun resumes: every stage finds its outputs and the restored images are unchanged
    before = [p.read_bytes() for p in outs]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.read_bytes() for p in outs] == before


def test_demo_runs_offline_with_the_shipped_model(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "refsr_cli", "-q", "demo", "-o", str(out), "--steps", "2", "--crop", "128",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "picture:" in proc.stdout and "PSNR" in proc.stdout
    picture = io.read_rgb(out / "comparison.png")
    assert picture.shape[1] == 4 * 128  # LR bicubic | no refs | refs | ground truth
    report = json.loads((out / "report.json").read_text())
    assert set(report["reports"]) == {"bicubic", "without_refs", "with_refs"}
    for rep in report["reports"].values():
        assert np.isfinite(rep["metrics"]["psnr"]["mean"])
    used = json.loads((out / "restored/with_refs/run.json").read_text())["images"]
    refs = [r for rec in used.values() for r in rec["refs"]]
    assert refs and all("motorcycle_right" in r["path"] for r in refs[:1])  # the stereo view ranks first
    assert json.loads((out / "restored/without_refs/run.json").read_text())["images"]
