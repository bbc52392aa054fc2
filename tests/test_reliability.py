"""Issue 17: what every command promises about the files it writes and the inputs it reads.

Each test here backs one line of the README's "Reliability" list.
"""

from __future__ import annotations

import os
import stat

import pytest
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
        res = _cli("train", "--stage", "autoencoder", "--data", photo_folder, "--config", "tiny", "--steps", 1,
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
