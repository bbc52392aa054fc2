"""The `refsr` command group: help, version, error reporting conventions."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

import refsr
from refsr_cli.main import SUBCOMMANDS, cli

SIX = ["degrade", "index-refs", "match", "train", "sample", "evaluate"]


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_the_six_subcommands():
    result = run("--help")
    assert result.exit_code == 0
    for name in SIX:
        assert f"  {name} " in result.output


def test_version():
    assert run("--version").output.strip().endswith(refsr.__version__)


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_help_says_what_it_reads_writes_and_shows_an_example(name):
    result = run(name, "--help")
    assert result.exit_code == 0, result.output
    text = result.output.lower()
    assert f"refsr {name}" in text  # an example invocation
    assert "example" in text


def test_unknown_option_is_a_usage_error():
    result = CliRunner().invoke(cli, ["evaluate", "--no-such-option"])
    assert result.exit_code == 2


def test_corrupt_image_gives_one_line_error_and_exit_1(tmp_path):
    """Through a real process, as a user runs it: exit 1, one line, no traceback."""
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "refsr_cli", "degrade", str(bad), "-o", str(out), "--crop", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[0].startswith("refsr degrade: error: ")
    assert "corrupt.png" in lines[0]
    assert "Traceback" not in proc.stderr


def test_verbose_shows_the_traceback(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "refsr_cli", "-v", "degrade", str(bad), "-o", str(tmp_path / "o"), "--crop", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "corrupt.png" in proc.stderr


def test_bad_device_is_a_usage_error():
    result = CliRunner().invoke(cli, ["sample", "--device", "tpu", "x.png", "-o", "out"])
    assert result.exit_code == 2
    assert "tpu" in result.output


def test_multi_process_launch_shards_inputs(monkeypatch):
    """Under `accelerate launch`/`torchrun` (RANK, WORLD_SIZE set) each process takes its shard;
    an explicit --shard wins; a single process is unsharded."""
    from refsr_cli.common import _check_shard, launcher_shard

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher_shard() is None and _check_shard(None, None, None) is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert _check_shard(None, None, None) == (3, 4)
    assert _check_shard(None, None, "1/2") == (1, 2)
