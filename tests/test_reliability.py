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
