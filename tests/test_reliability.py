"""Issue 17: what every command promises about the files it writes and the inputs it reads.

Each test here backs one line of the "Reliability" list (docs/formats.md).
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from pathlib import Path
from click.testing import CliRunner

from refsr import io
from refsr_cli.main import cli


def _cli(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


# ---------------------------------------------------------------------------------------
# 1. outputs get the mode a plain write would give them
# ---------------------------------------------------------------------------------------


def test_degrade_outputs_follow_the_umask(photo_folder, tmp_path, umask):
    out = tmp_path / "pairs"
    res = _cli("degrade", photo_folder, "-o", out, "--crop", "48", "--workers", "1")
    assert res.exit_code == 0, res.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {p.name for p in files} >= {"manifest.jsonl", "astronaut_0.png"}
    assert {p.relative_to(out).as_posix(): _mode(p) for p in files} == {
        p.relative_to(out).as_posix(): 0o666 & ~umask for p in files}
    assert {_mode(d) for d in out.rglob("*") if d.is_dir()} == {0o777 & ~umask}


def test_exported_model_folder_follows_the_umask(tmp_path, umask):
    import torch

    from refsr.models.ldm import RefSRModel

    torch.manual_seed(0)
    RefSRModel.from_config("tiny", kind="ldm").save_pretrained(tmp_path / "model")
    paths = [tmp_path / "model", *(tmp_path / "model").rglob("*")]
    assert {p.relative_to(tmp_path).as_posix(): _mode(p) for p in paths} == {
        p.relative_to(tmp_path).as_posix(): (0o777 if p.is_dir() else 0o666) & ~umask for p in paths}


# ---------------------------------------------------------------------------------------
# 2. train writes only into its own run folder
# ---------------------------------------------------------------------------------------


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_train_refuses_a_folder_that_is_not_a_run_and_deletes_nothing(tmp_path, photo_folder):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "important.txt").write_text("mine")
    for extra in ([], ["--overwrite"], ["--resume"]):
        res = _cli("train", "autoencoder", photo_folder, "--config", "tiny", "--steps", 1,
                   "--device", "cpu", "--no-lpips", "-o", run, *extra)
        assert res.exit_code == 1, res.output
        assert res.output.strip().splitlines() == [
            f"refsr train: error: {run}: not empty and not a refsr train run (no run.json of `refsr train`); "
            "give a new or empty folder (nothing in it was changed)"]
        assert _tree(run) == ["model", "model/important.txt"]


def test_train_overwrite_deletes_only_what_a_run_made(tmp_path):
    from refsr.io import write_json
    from refsr.train.loop import claim_run_folder

    run = tmp_path / "run"
    write_json(run / "run.json", {"stage": "autoencoder"})  # as written before run.json had a format
    for made in ("checkpoints/step-0000002/state.json", "checkpoints/.step-0000004.tmp/model.safetensors",
                 "validation/step-0000002.png", "model/vqvae/config.json", "metrics.jsonl"):
        (run / made).parent.mkdir(parents=True, exist_ok=True)
        (run / made).write_text("{}")
    for mine in ("notes.txt", "checkpoints/README", "validation/keep.png"):
        (run / mine).write_text("mine")
    claim_run_folder(run, resume=False, overwrite=True, stage="autoencoder")
    assert _tree(run) == ["checkpoints", "checkpoints/README", "notes.txt", "run.json", "validation",
                          "validation/keep.png"]


def test_train_keeps_a_finished_runs_model_without_overwrite(tmp_path):
    from refsr.errors import InputError
    from refsr.io import write_json
    from refsr.train.loop import claim_run_folder

    run = tmp_path / "run"
    write_json(run / "run.json", {"format": "refsr.train/1", "stage": "diffusion"})
    (run / "model").mkdir()
    (run / "model" / "refsr.json").write_text("{}")  # checkpoints/ removed to save space
    with pytest.raises(InputError, match=r"already holds an exported model/ \(finished run\); pass --resume"):
        claim_run_folder(run, resume=False, overwrite=False, stage="diffusion")
    with pytest.raises(InputError, match="has no checkpoint to resume from, and starting again would replace"):
        claim_run_folder(run, resume=True, overwrite=False, stage="diffusion")
    assert _tree(run) == ["model", "model/refsr.json", "run.json"]
    # a sample output folder has a run.json too, but it is not a train run
    other = tmp_path / "restored"
    write_json(other / "run.json", {"format": "refsr.sample/1", "images": {}})
    with pytest.raises(InputError, match="not a refsr train run"):
        claim_run_folder(other, resume=False, overwrite=True)
    claim_run_folder(tmp_path / "new", resume=False, overwrite=False, stage="matcher")
    assert io.read_json(tmp_path / "new" / "run.json") == {"format": "refsr.train/1", "stage": "matcher"}


# ---------------------------------------------------------------------------------------
# 6. names taken from input data never lead a write out of the output folder
# ---------------------------------------------------------------------------------------

HOSTILE = ["..", "", "/abs", "a/../../b"]


def _inside(folder, paths):
    root = os.path.realpath(folder)
    return all(os.path.realpath(p).startswith(root + os.sep) for p in paths)


def test_safe_name_keeps_every_hostile_name_one_component():
    assert [io.safe_name(n) for n in HOSTILE] == ["__", "_", "_abs", "a_.._.._b"]
    assert io.safe_name("my photo_0") == "my photo_0" and io.safe_name(".") == "_"


def test_degrade_pair_files_stay_in_the_output_folder(tmp_path, photo_folder):
    from refsr.degrade.params import resolve_config
    from refsr.degrade.pipeline import process_pair

    out = tmp_path / "sub" / "pairs"
    src = photo_folder / "astronaut.png"
    for i, pid in enumerate(HOSTILE):
        rec = process_pair({"id": pid, "index": i, "source": str(src), "source_rel": str(src), "crop_index": 0,
                            "scale": 4, "crop": 32, "seed": 0, "config": resolve_config("bicubic", None, None),
                            "out": str(out)})
        assert rec["id"] == pid and _inside(out, [out / rec["hr"], out / rec["lr"]])
    assert sorted(p.name for p in (out / "hr").iterdir()) == ["_.png", "__.png", "_abs.png", "a_.._.._b.png"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png") if "photos" not in p.parts) == sorted(
        f"sub/pairs/{d}/{n}" for d in ("hr", "lr") for n in ("_.png", "__.png", "_abs.png", "a_.._.._b.png"))


def test_match_save_crops_stay_in_the_crops_folder(tmp_path):
    from test_retrieval import SETTINGS, SPEC

    from conftest import small_photo
    from refsr.retrieval.index import index_refs
    from refsr.retrieval.match import MatchSettings, match_queries

    for name in ("coffee", "chelsea"):
        io.write_image(tmp_path / "refs" / f"{name}.png", small_photo(name))
    index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC)
    hr = small_photo("astronaut")[:64, :64]
    records = []
    for i, pid in enumerate(HOSTILE):
        io.write_image(tmp_path / "w" / "pairs" / "hr" / f"p{i}.png", hr)
        io.write_image(tmp_path / "w" / "pairs" / "lr" / f"p{i}.png", hr[::4, ::4])
        records.append({"id": pid, "hr": f"hr/p{i}.png", "lr": f"lr/p{i}.png", "scale": 4, "source": "none.png",
                        "crop": [0, 0, 64, 64], "seed": 0, "degradation": {}})
    io.write_jsonl(tmp_path / "w" / "pairs" / "manifest.jsonl", records)
    crops = tmp_path / "w" / "crops"
    match_queries(tmp_path / "w" / "pairs" / "manifest.jsonl", tmp_path / "idx", tmp_path / "w" / "m.jsonl",
                  MatchSettings(**dict(SETTINGS, top_images=2, top_refs=1)), matcher="none", save_crops=crops)
    written = [p for p in tmp_path.rglob("*.png") if "refs" not in p.parts and "pairs" not in p.parts]
    assert sorted(p.relative_to(crops).as_posix() for p in written) == [
        "_/00.png", "__/00.png", "_abs/00.png", "a_.._.._b/00.png"]


def test_sample_suffix_cannot_leave_the_output_folder(tmp_path):
    from refsr.sample.restore import InputItem, output_paths

    out = tmp_path / "a" / "out"
    items = [InputItem(tmp_path / "lr" / "im.png")]
    names = [output_paths(items, out, suffix)[0] for suffix in HOSTILE]
    assert [p.relative_to(out).as_posix() for p in names] == ["im...png", "im.png", "im_abs.png", "ima_.._.._b.png"]
    # end to end, through the CLI
    import torch

    from refsr.models import RefSRModel

    torch.manual_seed(0)
    RefSRModel.from_config("tiny", kind="ldm").save_pretrained(tmp_path / "model")
    io.write_image(tmp_path / "lr" / "im.png", np.full((8, 8, 3), 0.5, np.float32))
    res = _cli("sample", "--model", tmp_path / "model", tmp_path / "lr" / "im.png", "-o", out, "--suffix", "/../../x",
               "--steps", 1, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "a/out/im_.._.._x.png", "lr/im.png"]


# ---------------------------------------------------------------------------------------
# 3. images too large to decode are refused from their header
# ---------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG file whose IHDR claims ``width`` x ``height`` (8-bit RGB); its pixel data
    is a few bytes, so decoding it for real would fail, but nothing should try."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100000, 100000), (32000, 32000)])
def test_huge_image_header_is_refused_before_decoding(tmp_path, size, monkeypatch):
    import cv2

    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(*size))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded a refused image"))
    with pytest.raises(io.InputError) as err:
        io.read_image(path)
    w, h = size
    assert str(err.value) == (f"{path}: {w}x{h} pixels ({w * h / 1e6:.0f} MP) is over the limit of 268 MP; "
                              "set REFSR_MAX_PIXELS to a larger number of pixels to read it")


def test_pixel_limit_follows_refsr_max_pixels(tmp_path, monkeypatch):
    io.write_image(tmp_path / "small.png", np.zeros((20, 30, 3), np.float32))
    monkeypatch.setenv("REFSR_MAX_PIXELS", "599")
    with pytest.raises(io.InputError, match=r"small.png: 30x20 pixels \(0 MP\) is over the limit"):
        io.read_image(tmp_path / "small.png")
    monkeypatch.setenv("REFSR_MAX_PIXELS", "600")
    assert io.read_image(tmp_path / "small.png").rgb.shape == (20, 30, 3)
    monkeypatch.setenv("REFSR_MAX_PIXELS", "lots")
    with pytest.raises(io.InputError, match="REFSR_MAX_PIXELS='lots': expected a positive number"):
        io.read_image(tmp_path / "small.png")


def test_degrade_skip_bad_skips_a_huge_image_and_names_it(photo_folder, tmp_path):
    (photo_folder / "bomb.png").write_bytes(png_header_only(100000, 100000))
    res = _cli("degrade", photo_folder, "-o", tmp_path / "pairs", "--crop", "48", "--workers", "1")
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"refsr degrade: error: {photo_folder / 'bomb.png'}: 100000x100000 pixels (10000 MP) is over the limit of "
        "268 MP; set REFSR_MAX_PIXELS to a larger number of pixels to read it"]
    res = _cli("degrade", photo_folder, "-o", tmp_path / "skip", "--crop", "48", "--workers", "1", "--skip-bad")
    assert res.exit_code == 0, res.output
    assert "2 pairs written, 0 already complete, 1 bad inputs skipped" in res.output
    assert f"skipped bad input: {photo_folder / 'bomb.png'}: 100000x100000 pixels" in res.output
    assert [r["id"] for r in io.read_jsonl(tmp_path / "skip" / "manifest.jsonl")] == ["astronaut_0", "coffee_0"]


# ---------------------------------------------------------------------------------------
# 4. sample: every finished image is recorded at once; settings never mix
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ldm():
    import torch

    from refsr.models import RefSRModel

    torch.manual_seed(0)
    return RefSRModel.from_config("tiny", kind="ldm").eval()


def _lr_folder(root, n=3):
    for i in range(n):
        io.write_image(root / f"im{i}.png", np.full((8, 8 + 4 * i, 3), 0.2 + 0.2 * i, np.float32))
    return root


def test_sample_killed_midway_loses_no_record(tmp_path, tiny_ldm, monkeypatch):
    from refsr.sample import SampleSettings, restore, sample_files

    lr, out, fast = _lr_folder(tmp_path / "lr"), tmp_path / "out", SampleSettings(steps=1, tile=0)
    real, calls = restore._restore_one, []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as kill -9: with no clean-up at all (below)
        return real(*a, **k)

    monkeypatch.setattr(restore, "_restore_one", dies_on_third)
    monkeypatch.setattr(restore, "merge_run_logs", lambda out_dir: None)
    with pytest.raises(KeyboardInterrupt):
        sample_files([lr], out, model=tiny_ldm, settings=fast, device="cpu")
    assert sorted(p.name for p in out.glob("*.png")) == ["im0_sr.png", "im1_sr.png"] and not (out / "run.json").exists()
    monkeypatch.undo()
    summary = sample_files([lr], out, model=tiny_ldm, settings=fast, device="cpu")
    assert [p.name for p in summary.skipped] == ["im0_sr.png", "im1_sr.png"]
    images = io.read_json(out / "run.json")["images"]
    assert sorted(images) == ["im0_sr.png", "im1_sr.png", "im2_sr.png"]
    assert images["im1_sr.png"]["size"] == [12, 8] and not list(out.glob(".run-*.jsonl"))


def test_sample_shards_merge_without_locks_like_one_run(tmp_path, tiny_ldm, monkeypatch):
    """Shards run one after another give the run.json of one unsharded run; a killed shard's log
    is not merged while it might still be running, and `refsr sample --merge` merges it."""
    from click.testing import CliRunner

    from refsr.sample import SampleSettings, restore, sample_files
    from refsr_cli.main import cli

    lr, fast = _lr_folder(tmp_path / "lr"), SampleSettings(steps=1, tile=0)
    sample_files([lr], tmp_path / "full", model=tiny_ldm, settings=fast, device="cpu")
    for k in range(3):
        sample_files([lr], tmp_path / "sharded", model=tiny_ldm, settings=fast, device="cpu", shard=(k, 3))
        # a shard that finds no other shard running merges: run.json holds the finished shards
        assert len(io.read_json(tmp_path / "sharded" / "run.json")["images"]) == k + 1
    strip = lambda run: {**run, "images": {n: {**r, "seconds": 0} for n, r in run["images"].items()}}  # noqa: E731
    full = strip(io.read_json(tmp_path / "full" / "run.json"))
    assert strip(io.read_json(tmp_path / "sharded" / "run.json")) == full
    assert not list((tmp_path / "sharded").glob(".run-*.jsonl"))
    assert "fcntl" not in Path(restore.__file__).read_text()  # no lock: flock does not serialise across nodes
    # shard 1 is killed (no end line: it might be running on another node), the others finish
    out = tmp_path / "killed"
    real_end = restore.RunLog.end
    for k in range(3):
        if k == 1:
            monkeypatch.setattr(restore.RunLog, "end", lambda self: self._file.close())
        sample_files([lr], out, model=tiny_ldm, settings=fast, device="cpu", shard=(k, 3))
        monkeypatch.setattr(restore.RunLog, "end", real_end)
    assert list(io.read_json(out / "run.json")["images"]) == ["im0_sr.png"] and len(list(out.glob(".run-*.jsonl"))) == 2
    r = CliRunner().invoke(cli, ["-q", "sample", "--merge", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert strip(io.read_json(out / "run.json")) == full and not list(out.glob(".run-*.jsonl"))
    # merging again is harmless; a log taken away while its run went on is written again at its end
    before = (out / "run.json").read_bytes()
    restore.merge_run_logs(out, everything=True)
    assert (out / "run.json").read_bytes() == before
    log = restore.RunLog(out, {"steps": 1}, (0, 1))
    log.add("x.png", {"size": [1, 1]})
    log.path.unlink()
    log.end()
    assert restore._read_log(log.path).ended and restore._read_log(log.path).images == {"x.png": {"size": [1, 1]}}


def test_sample_rerun_with_other_settings_is_refused_or_recorded_per_image(tmp_path, tiny_ldm):
    from refsr.sample import SampleSettings, sample_files

    lr, out = _lr_folder(tmp_path / "lr", 2), tmp_path / "out"
    sample_files([lr / "im0.png"], out, model=tiny_ldm, settings=SampleSettings(steps=1, tile=0), device="cpu")
    with pytest.raises(io.InputError) as err:
        sample_files([lr], out, model=tiny_ldm, settings=SampleSettings(steps=2, tile=0), seed=5, device="cpu")
    assert str(err.value) == (f"{out}: holds outputs made with other settings (seed 0 -> 5, steps 1 -> 2); "
                              "pass --overwrite to redo them with these settings, or use another output folder")
    assert sorted(p.name for p in out.glob("*.png")) == ["im0_sr.png"]
    sample_files([lr / "im1.png"], out, model=tiny_ldm, settings=SampleSettings(steps=2, tile=0), device="cpu",
                 overwrite=True)
    run = io.read_json(out / "run.json")
    assert run["steps"] == 2 and "settings" not in run["images"]["im1_sr.png"]
    assert run["images"]["im0_sr.png"]["settings"]["steps"] == 1  # made with the first run's settings


# ---------------------------------------------------------------------------------------
# 5. match keeps an existing output only if it was made from the same queries, index, settings
# ---------------------------------------------------------------------------------------


def test_match_refuses_an_output_made_from_other_queries_index_or_settings(tmp_path):
    from test_retrieval import SETTINGS, SPEC

    from conftest import small_photo
    from refsr.retrieval.index import index_refs
    from refsr.retrieval.match import MatchSettings, match_queries

    for name in ("coffee", "chelsea"):
        io.write_image(tmp_path / "refs" / f"{name}.png", small_photo(name))
    index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC)
    for name in ("astronaut", "camera"):
        io.write_image(tmp_path / "q" / f"{name}.png", small_photo(name)[:64, :64])
    out, base = tmp_path / "m.jsonl", MatchSettings(**dict(SETTINGS, top_images=2, top_refs=2))

    def run(queries=tmp_path / "q", settings=base, **kw):
        return match_queries(queries, tmp_path / "idx", out, settings, matcher="none", **kw)

    run()
    first = out.read_text()
    assert run().skipped and out.read_text() == first  # same queries, index, settings: kept
    with pytest.raises(io.InputError, match=r"m.jsonl: exists but was made from other queries \(2 lines for 1 "):
        run(queries=tmp_path / "q" / "camera.png")
    with pytest.raises(io.InputError, match=r"made with other settings or index \(top_refs 2 -> 3\); pass --overwrite"):
        run(settings=MatchSettings(**dict(SETTINGS, top_images=2, top_refs=3)))
    io.write_image(tmp_path / "refs" / "rocket.png", small_photo("rocket"))
    index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC)
    with pytest.raises(io.InputError, match=r"other settings or index \(index \{'generation': 1, .* -> \{'generation': 2"):
        run()
    assert out.read_text() == first  # nothing was changed by the refusals
    assert not run(overwrite=True).skipped and out.read_text() != first
    out.write_text("not json\n")
    with pytest.raises(io.InputError, match=r"m.jsonl:1: invalid JSON .*; the existing output is not a matches file"):
        run()


# ---------------------------------------------------------------------------------------
# 7. weights: never unpickled, never downloaded; a bad metric file costs only that metric
# ---------------------------------------------------------------------------------------


def _plant(path, marker):
    """A torch checkpoint that runs code when unpickled (it creates ``marker``)."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Payload()}, path)


def test_bad_or_hostile_metric_weights_make_only_that_metric_unavailable(photo_folder, tmp_path, monkeypatch):
    import json

    import torch

    marker = tmp_path / "pwned"
    hub, clip = tmp_path / "hub", tmp_path / "home" / ".cache" / "clip"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not turn our protection off
    _plant(hub / "checkpoints" / "alexnet-owt-7be5be79.pth", marker)
    (hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"\x00corrupt" * 10)
    _plant(clip / "clipiqa_tokens.pt", marker)
    (clip / "RN50.pt").write_bytes(b"not torchscript")
    res = _cli("evaluate", "--pred", photo_folder, "--gt", photo_folder, "--suffix", "",
               "--metrics", "psnr,lpips,fid,clipiqa", "-o", tmp_path / "report.json")
    assert res.exit_code == 0, res.output
    assert not marker.exists()
    metrics = json.loads((tmp_path / "report.json").read_text())["metrics"]
    assert metrics["psnr"]["status"] == "ok" and metrics["psnr"]["count"] == 2
    for name, file in [("lpips", hub / "checkpoints" / "alexnet-owt-7be5be79.pth"),
                       ("fid", hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"),
                       ("clipiqa", clip / "clipiqa_tokens.pt")]:
        assert metrics[name]["status"] == "unavailable"
        assert metrics[name]["reason"].endswith(
            f"weights {file} cannot be read as a weights-only checkpoint (UnpicklingError); replace it with the "
            "published file"), metrics[name]["reason"]
    (clip / "clipiqa_tokens.pt").unlink()
    torch.save(torch.tensor([[1, 2], [3, 4]]), clip / "clipiqa_tokens.pt")
    from refsr.errors import BadWeightsError
    from refsr.metrics.perceptual import load_clipiqa

    with pytest.raises(BadWeightsError, match=f"CLIP-IQA \\(CLIP RN50\\) weights {clip / 'RN50.pt'} cannot be read "):
        load_clipiqa()


def test_every_torch_load_of_the_metrics_is_weights_only(monkeypatch):
    import torch

    from refsr.metrics import perceptual

    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    perceptual.build_lpips("alex")
    perceptual.build_lpips("vgg")
    assert calls and all(c is True for c in calls), calls  # lpips' own loading would not be


def test_autoencoder_lpips_never_downloads_and_says_where_the_file_goes(tmp_path, photo_folder, monkeypatch):
    import torch

    from refsr.errors import MissingWeightsError
    from refsr.train.autoencoder import AutoencoderStage

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    stage = AutoencoderStage(photo_folder, config="tiny", lpips=True, patch_size=32, holdout=0.0)
    with pytest.raises(MissingWeightsError) as err:
        stage.module()
    expected = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(err.value) == (
        f"LPIPS (vgg trunk) weights not found: {expected} is missing (no download is attempted); fetch "
        f"https://download.pytorch.org/models/vgg16-397923af.pth on a machine with network access and copy it to "
        f"{expected}; or pass --no-lpips to train the autoencoder without the perceptual loss")
    assert AutoencoderStage(photo_folder, config="tiny", lpips=False, patch_size=32, holdout=0.0).module().lpips == [None]


# ---------------------------------------------------------------------------------------
# 8. smaller points
# ---------------------------------------------------------------------------------------


def _tiny_training_state():
    import torch

    from refsr.train.loop import EMA

    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return module, optimizer, EMA(module.parameters(), 0.9)


def test_resume_skips_a_damaged_checkpoint_and_names_it(tmp_path, caplog):
    from refsr.errors import InputError
    from refsr.train.loop import resume_from, save_checkpoint

    module, optimizer, ema = _tiny_training_state()
    for step in (1, 2):
        save_checkpoint(tmp_path / "checkpoints", module, optimizer, ema, step, keep=3)
    newest = tmp_path / "checkpoints" / "step-0000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])  # torn by a crash
    with caplog.at_level("WARNING", logger="refsr.train"):
        assert resume_from(tmp_path, *_tiny_training_state()) == 1
    assert f"{newest}: damaged checkpoint file (SafetensorError" in caplog.text
    (tmp_path / "checkpoints" / "step-0000001" / "state.json").write_text("{")
    with pytest.raises(InputError, match=f"no readable checkpoint to resume from \\(newest: {newest}: damaged"):
        resume_from(tmp_path, *_tiny_training_state())


def test_a_full_disk_names_the_file_and_leaves_no_partial_output(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    from refsr.errors import OutputError
    from refsr.train.loop import save_checkpoint

    with pytest.raises(OutputError, match=f"^{tmp_path / 'r.json'}: cannot write it \\(No space left on device\\)$"):
        with io.atomic_open(tmp_path / "r.json") as f:
            f.write("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match="checkpoints/step-0000003: cannot write the checkpoint \\(No space left"):
        save_checkpoint(tmp_path / "checkpoints", *_tiny_training_state(), 3, keep=3)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no .step-0000003.tmp/


@pytest.mark.parametrize("scale", [0, -4])
def test_manifest_scale_must_be_positive(tmp_path, scale):
    io.write_image(tmp_path / "hr.png", np.zeros((8, 8, 3), np.float32))
    io.write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "hr": "hr.png", "lr": "hr.png", "scale": scale, "source": "x",
                                           "crop": [0, 0, 8, 8], "seed": 0, "degradation": {}}])
    with pytest.raises(io.ManifestError, match=f"m.jsonl:1: field 'scale' must be a positive integer, got {scale}$"):
        io.read_pair_manifest(tmp_path / "m.jsonl")


def test_sample_refuses_impossible_output_sizes_before_sampling(tmp_path, tiny_ldm, monkeypatch):
    from refsr.sample import SampleSettings, restore, sample_files

    lr = _lr_folder(tmp_path / "lr", 1)
    monkeypatch.setattr(restore, "_restore_one", lambda *a, **k: pytest.fail("sampled before refusing"))
    run = lambda outscale: sample_files([lr], tmp_path / "out", model=tiny_ldm, outscale=outscale,  # noqa: E731
                                        settings=SampleSettings(steps=1, tile=0), device="cpu")
    with pytest.raises(io.InputError, match=r"im0.png: --outscale 0.001 gives a 0.01x0.01 output from 8x8; choose"):
        run(0.001)
    with pytest.raises(io.InputError, match=r"im0.png \(output at --outscale 3000\): 24000x24000 pixels \(576 MP\) "
                                            r"is over the limit of 268 MP"):
        run(3000)
    assert not list((tmp_path / "out").glob("*.png"))


def test_index_refs_interrupted_after_a_while_resumes_without_reembedding(tmp_path, monkeypatch):
    import itertools
    import time

    from test_retrieval import SPEC, CountingEmbed

    from conftest import small_photo
    from refsr.retrieval.index import index_refs

    for name in ("coffee", "chelsea", "rocket", "camera"):
        io.write_image(tmp_path / "refs" / f"{name}.png", small_photo(name))
    clock = itertools.count(start=0.0, step=40.0)  # each look at the clock: 40 s later (slow embedding)
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    CountingEmbed(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the 4th image, default flush settings
        index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC, batch_size=1)
    monkeypatch.undo()
    counter = CountingEmbed(monkeypatch)
    stats = index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC, batch_size=1)
    assert (counter.images, stats.reused, stats.count) == (1, 3, 4)


def test_a_first_index_run_does_not_claim_an_interrupted_update(tmp_path, caplog):
    from test_retrieval import SPEC

    from conftest import small_photo
    from refsr.retrieval.index import index_refs

    io.write_image(tmp_path / "refs" / "coffee.png", small_photo("coffee"))
    with caplog.at_level("INFO", logger="refsr"):
        index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC)
    assert "interrupted" not in caplog.text


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to find the workers")
def test_degrade_workers_die_with_a_killed_parent_without_tracebacks(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import small_photo

    for i in range(12):
        io.write_image(tmp_path / "photos" / f"p{i}.png", small_photo(["astronaut", "coffee", "chelsea"][i % 3], (384, 384)))
    script = ("from refsr.degrade.pipeline import degrade_folder; "
              f"degrade_folder([{str(tmp_path / 'photos')!r}], {str(tmp_path / 'pairs')!r}, crop=64, "
              "crops_per_image=40, workers=2)")
    with open(tmp_path / "stderr.txt", "w") as err:
        parent = subprocess.Popen([sys.executable, "-c", script], stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def children():
        found = []
        for d in os.listdir("/proc"):
            try:
                with open(f"/proc/{d}/stat") as f:
                    if d.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == parent.pid:
                        found.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("pairs/hr/*.png")):  # the workers are busy with pairs
        assert time.monotonic() < deadline and parent.poll() is None, "degrade did not start"
        time.sleep(0.2)
    workers = children()
    assert workers, "no pool workers found"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, "pool workers outlived the killed degrade"
        time.sleep(0.2)
    time.sleep(0.5)
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


def test_png_warnings_of_libpng_do_not_leak_to_stderr(tmp_path, capfd):
    import struct
    import zlib

    from PIL import Image as PILImage

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    pal = PILImage.new("P", (6, 4))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0  # a tRNS chunk: alpha must survive
    pal.save(tmp_path / "clean.png")
    data = (tmp_path / "clean.png").read_bytes()
    bad = chunk(b"iCCP", b"bad\x00\x00" + zlib.compress(b"not an ICC profile")) + chunk(b"tEXt", b"\x00no keyword")
    (tmp_path / "warns.png").write_bytes(data[:33] + bad + data[33:])  # right after IHDR
    capfd.readouterr()
    warned, clean = io.read_image(tmp_path / "warns.png"), io.read_image(tmp_path / "clean.png")
    assert capfd.readouterr().err == ""
    assert np.array_equal(warned.rgb, clean.rgb) and np.array_equal(warned.alpha, clean.alpha)
    assert clean.alpha is not None and clean.alpha[1, 1] == 1.0 and clean.alpha[0, 0] == 0.0


def test_sample_plans_its_memory_and_refuses_what_cannot_fit(tmp_path, coffee, monkeypatch):
    """Issue 17.3: an image whose full-size canvases cannot fit is refused before any sampling,
    naming the sizes, the estimate, what is free and what to change; nothing is written."""
    import cv2
    from click.testing import CliRunner

    from refsr.errors import InputError
    from refsr.io import write_image
    from refsr.sample import restore
    from refsr.sample.core import SampleSettings

    settings = SampleSettings(color_fix="wavelet")
    need = restore.plan_memory("x.png", (100, 200), 4, None, settings, "cpu", available=lambda d: 10**12)
    assert need == 400 * 800 * restore.BYTES_PER_OUTPUT_PIXEL["wavelet"]
    with pytest.raises(InputError, match=r"x.png: restoring 200x100 at x4 \(800x400 px\) needs about 0.1 GiB of "
                                         r"host memory and 0.0 GiB are free; .*--color-fix none"):
        restore.plan_memory("x.png", (100, 200), 4, None, settings, "cpu", available=lambda d: 1000)
    write_image(tmp_path / "lr.png", cv2.resize(coffee, (16, 16), interpolation=cv2.INTER_AREA))
    monkeypatch.setattr(restore, "available_memory", lambda device: 1000)
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                      "--device", "cpu", "--steps", "1"])
    assert result.exit_code == 1 and "GiB are free" in result.output
    assert not list((tmp_path / "out").glob("*.png"))
