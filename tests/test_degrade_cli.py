"""`refsr degrade` end to end: files, manifest, resume, workers, shards, bad inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from refsr import io
from refsr.degrade.numpy_exec import degrade_image
from refsr.degrade.pipeline import crop_region, degrade_folder
from refsr_cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, ["-q", "degrade", *map(str, args)])


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _records(path):
    return [{k: v for k, v in r.items() if k != "_line"} for r in io.read_jsonl(path)]


def test_cli_writes_pairs_and_manifest_that_reproduces_them(photo_folder, tmp_path):
    out = tmp_path / "pairs"
    res = _run(photo_folder, "-o", out, "--crop", "48", "--crops-per-image", "2", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert "4 pairs written, 0 already complete, 0 bad inputs" in res.output
    recs = io.read_pair_manifest(out / "manifest.jsonl")
    assert [r["id"] for r in recs] == ["astronaut_0", "astronaut_1", "coffee_0", "coffee_1"]
    for r in recs:
        assert r["format"] == io.PAIR_FORMAT and r["scale"] == 4 and r["preset"] == "realesrgan"
        src = io.resolve_path(out / "manifest.jsonl", r["source"])
        assert r["source_sha256"] == io.sha256_file(src) and not r["padded"]
        x, y, w, h = r["crop"]
        hr = io.read_rgb(r["hr_path"])
        np.testing.assert_array_equal(hr, io.read_rgb(src)[y : y + h, x : x + w])
        # the record alone reproduces the LR bytes
        _, lr = degrade_image(hr, r["degradation"], r["scale"])
        np.testing.assert_array_equal(io.to_uint(lr), io.to_uint(io.read_rgb(r["lr_path"])))
        assert io.read_rgb(r["lr_path"]).shape == (12, 12, 3)


def test_same_seed_same_bytes_any_workers_and_resume(photo_folder, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    degrade_folder([photo_folder], a, crop=32, crops_per_image=2, seed=3, workers=1)
    degrade_folder([photo_folder], b, crop=32, crops_per_image=2, seed=3, workers=2)
    degrade_folder([photo_folder], c, crop=32, crops_per_image=2, seed=4, workers=1)
    assert _files(a) == _files(b) and _records(a / "manifest.jsonl") == _records(b / "manifest.jsonl")
    assert _files(a)["lr/coffee_1.png"] != _files(c)["lr/coffee_1.png"]
    (a / "lr" / "coffee_1.png").unlink()
    again = degrade_folder([photo_folder], a, crop=32, crops_per_image=2, seed=3, workers=1)
    assert (again.written, again.skipped) == (1, 3)
    assert _files(a) == _files(b) and _records(a / "manifest.jsonl") == _records(b / "manifest.jsonl")
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        degrade_folder([photo_folder], a, crop=32, crops_per_image=2, seed=9, workers=1)
    redo = degrade_folder([photo_folder], a, crop=32, crops_per_image=2, seed=9, workers=1, overwrite=True)
    assert redo.written == 4 and {r["seed"] for r in _records(a / "manifest.jsonl")} == {9}


def test_shards_equal_unsharded_run(photo_folder, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    degrade_folder([photo_folder], full, crop=32, crops_per_image=3, workers=1)
    for k in range(3):
        res = _run(photo_folder, "-o", parts, "--crop", 32, "--crops-per-image", 3, "--shard", f"{k}/3", "--workers", 1)
        assert res.exit_code == 0, res.output
        assert (parts / f"manifest.shard-{k}-of-3.jsonl").is_file()
    assert "merged" in res.output  # the last shard merges automatically
    assert _files(full) == _files(parts)
    assert _records(full / "manifest.jsonl") == _records(parts / "manifest.jsonl")
    (parts / "manifest.jsonl").unlink()
    assert _run("--merge", "-o", parts).exit_code == 0
    assert _records(full / "manifest.jsonl") == _records(parts / "manifest.jsonl")


def test_crop_none_padding_and_bicubic(photo_folder, tmp_path):
    out = tmp_path / "o"
    assert _run(photo_folder, "-o", out, "--crop", "none", "--scale", 3, "--preset", "bicubic").exit_code == 0
    recs = {r["id"]: r for r in io.read_pair_manifest(out / "manifest.jsonl")}
    assert recs["coffee_0"]["crop"] == [0, 0, 96, 78] and io.read_rgb(recs["coffee_0"]["lr_path"]).shape == (26, 32, 3)
    assert recs["coffee_0"]["degradation"]["kind"] == "bicubic"
    pad = tmp_path / "p"
    assert _run(photo_folder, "-o", pad, "--crop", 128).exit_code == 0
    r = {r["id"]: r for r in io.read_pair_manifest(pad / "manifest.jsonl")}["astronaut_0"]
    assert r["padded"] and r["padding"] == [64, 64] and r["crop"] == [0, 0, 64, 64]
    assert io.read_rgb(r["hr_path"]).shape == (128, 128, 3)
    window, _, _ = crop_region(np.arange(12, dtype=np.float32).reshape(3, 4, 1).repeat(3, 2), 0, 0, 6)
    assert window[:, :, 0].tolist()[0] == [0, 1, 2, 3, 2, 1]  # reflect-101


def test_bad_inputs(photo_folder, tmp_path, astronaut):
    bad = photo_folder / "broken.png"
    bad.write_bytes(b"not a png at all")
    res = _run(photo_folder, "-o", tmp_path / "o")
    assert res.exit_code == 1 and "broken.png" in res.output and "not a readable image" in res.output
    res = _run(photo_folder, "-o", tmp_path / "o2", "--skip-bad", "--crop", 32)
    assert res.exit_code == 0 and "skipped bad input" in res.output and "broken.png" in res.output
    assert "2 pairs written" in res.output and "1 bad inputs skipped" in res.output
    assert _run(photo_folder, "-o", tmp_path / "o3", "--scale", 5).exit_code == 2
    assert _run(photo_folder, "-o", tmp_path / "o3", "--crop", 30).exit_code == 2  # not a multiple of 4
    assert _run(photo_folder, "-o", tmp_path / "o3", "--preset", "x").exit_code == 2
    cfg = tmp_path / "c.json"
    cfg.write_text('{"nope": 1}')
    res = _run(photo_folder, "-o", tmp_path / "o4", "--degradation-config", cfg, "--skip-bad")
    assert res.exit_code == 1 and "unknown parameter 'nope'" in res.output
    # the old name (--config, a model config in `refsr train`) still works, with one warning line
    res = _run(photo_folder, "-o", tmp_path / "o4", "--config", cfg, "--skip-bad")
    assert res.exit_code == 1 and "unknown parameter 'nope'" in res.output
    assert res.stderr.splitlines()[0] == ("warning: degrade --config is deprecated; use --degradation-config "
                                          "(--config names a model config in `refsr train`)")
    res = _run(photo_folder, "-o", tmp_path / "o4", "--config", cfg, "--degradation-config", cfg)
    assert res.exit_code == 2 and "give --degradation-config only (--config is its deprecated name)" in res.output
    small = tmp_path / "small"
    io.write_image(small / "tiny.png", astronaut[:20, :40])
    res = _run(small, "-o", tmp_path / "o5", "--scale", 4)
    assert res.exit_code == 1 and "tiny.png: image is 40x20, smaller than scale x 8 = 32" in res.output


def test_16bit_gray_and_rgba_inputs(tmp_path, astronaut):
    src = tmp_path / "in"
    img = cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA)
    io.write_image(src / "deep.png", img, bit_depth=16)
    io.write_image(src / "gray.png", img, gray=True)
    io.write_image(src / "rgba.png", img, alpha=np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert _run(src, "-o", tmp_path / "o", "--crop", 32).exit_code == 0
    recs = {r["id"]: r for r in io.read_pair_manifest(tmp_path / "o" / "manifest.jsonl")}
    assert recs["rgba_0"]["alpha_dropped"] is True and "alpha_dropped" not in recs["gray_0"]
    assert io.read_image(recs["deep_0"]["hr_path"]).bit_depth == 16
    lr = io.read_image(recs["rgba_0"]["lr_path"])
    assert lr.alpha is None and lr.rgb.shape == (8, 8, 3)
    g = io.read_rgb(recs["gray_0"]["hr_path"])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    assert before == {p.name: p.read_bytes() for p in src.iterdir()}  # inputs untouched


def test_equal_stems_get_distinct_ids(tmp_path, astronaut):
    for d in ("a", "b"):
        io.write_image(tmp_path / d / "x.png", astronaut[:64, :64])
    degrade_folder([tmp_path / "a", tmp_path / "b"], tmp_path / "o", crop=32, workers=1)
    ids = [r["id"] for r in io.read_pair_manifest(tmp_path / "o" / "manifest.jsonl")]
    assert len(set(ids)) == 2 and all(i.startswith("x-") for i in ids)


@pytest.mark.slow
def test_a_killed_worker_stops_degrade_with_an_error_not_a_hang_and_a_rerun_resumes(tmp_path, astronaut):
    import subprocess
    import sys
    import time

    import psutil

    src, out = tmp_path / "in", tmp_path / "o"
    for i in range(16):
        io.write_image(src / f"p{i:02d}.png", np.roll(astronaut, 16 * i, axis=1))
    cmd = [sys.executable, "-m", "refsr_cli.main", "-q", "degrade", str(src), "-o", str(out), "--crop", "256",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # three PNGs: a worker has sent a finished pair's record and is busy on its next one
        while not (out / "hr").is_dir() or len(list((out / "hr").glob("[!.]*.png"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        workers[0].kill()  # as the OOM killer would, in the middle of a pair
        _, err = proc.communicate(timeout=120)  # multiprocessing.Pool waited here for ever
    finally:
        proc.kill()
    assert proc.returncode == 1 and "a degrade worker process died" in err and "rerun the same command" in err
    for f in (out / "hr").glob("[!.]*.png"):  # no half-written pair (writes are atomic)
        assert io.read_rgb(f).shape == (256, 256, 3)
    kept = {r["hr"]: (out / r["hr"]).stat().st_mtime_ns for r in io.read_jsonl(out / ".manifest.jsonl.progress")}
    assert kept
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(io.read_pair_manifest(out / "manifest.jsonl")) == 16
    assert {hr: (out / hr).stat().st_mtime_ns for hr in kept} == kept  # the finished pairs were not redone
