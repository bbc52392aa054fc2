"""scripts/bench_gpu.sh, the GPU benchmarks of the performance issue, runs once on a lent machine
with a few minutes: every command it holds must be one its script accepts, and a step that fails
must not cost the steps after it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_GPU = ROOT / "scripts" / "bench_gpu.sh"

# Runs each script as __main__ up to its argument parsing: parse_args returns the namespace by an
# exception, so nothing is benchmarked; an argument the script does not know exits 2 with its usage.
_PARSE_ONLY = r"""
import argparse, json, os, runpy, sys
class Parsed(Exception):
    pass
parse_args = argparse.ArgumentParser.parse_args
def parse_only(self, args=None, namespace=None):
    raise Parsed(vars(parse_args(self, args, namespace)))
argparse.ArgumentParser.parse_args = parse_only
for name, argv in json.loads(sys.argv[1]):
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python SCRIPT` puts its folder first
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except Parsed as parsed:
        print(json.dumps([name, {k: str(v) for k, v in parsed.args[0].items()}]))
    else:
        print(json.dumps([name, None]))
"""


def _steps() -> list[tuple[str, list[str]]]:
    """The `run NAME SCRIPT ARGS...` lines of bench_gpu.sh, continuations joined."""
    text = BENCH_GPU.read_text().replace("\\\n", " ")
    return [(words[1], words[2:]) for words in (shlex.split(line) for line in text.splitlines()
                                                 if line.startswith("run "))]


def test_every_bench_gpu_command_is_accepted_by_its_script():
    steps = _steps()
    assert [name for name, _ in steps] == [
        "degrade", "sample_bf16_ddim50", "sample_bf16_dpmpp20", "sample_quick_fp32", "sample_no_lr_cache",
        "sample_draws_batched", "sample_channels_last", "degrade_numpy_cores"]  # 8: the files the machine returns
    run = subprocess.run([sys.executable, "-c", _PARSE_ONLY, json.dumps(steps)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    parsed = dict(json.loads(line) for line in run.stdout.splitlines() if line.startswith("["))
    assert set(parsed) == {name for name, _ in steps}
    assert all(parsed.values()), f"a script ended before parsing its arguments: {parsed}"
    # what the targets are measured with reached the scripts as meant
    assert parsed["sample_bf16_ddim50"]["precision"] == "bf16" and parsed["sample_bf16_ddim50"]["config"] == "paper"
    assert parsed["sample_bf16_dpmpp20"]["sampler"] == "dpmpp" and parsed["sample_bf16_dpmpp20"]["steps"] == "20"
    assert parsed["sample_no_lr_cache"]["lr_cache_mb"] in ("0", "0.0")
    assert parsed["degrade"]["devices"] == "cuda" and parsed["degrade_numpy_cores"]["devices"] == "cpu"


def test_bench_gpu_goes_on_after_a_failed_step(tmp_path):
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python3"  # the real Python for the set-up's import checks; each benchmark only logged
    stub.write_text(f'#!/bin/bash\n[ "$1" = -c ] && exec {sys.executable} "$@"\n'
                    f'echo "$*" >> {calls}\n'
                    '[[ "$*" == *--quick\\ --repeats\\ 2* ]] && { echo "CUDA out of memory"; exit 3; }\n'
                    'echo "table of $1"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub)}
    run = subprocess.run(["bash", str(BENCH_GPU), str(tmp_path / "logs")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "failed: sample_quick_fp32 " in run.stderr
    assert len(calls.read_text().splitlines()) == 8  # every step ran, those after the failure too
    logs = tmp_path / "logs"
    assert sorted(p.stem for p in logs.iterdir()) == sorted(name for name, _ in _steps())
    assert (logs / "sample_quick_fp32.txt").read_text() == (
        "CUDA out of memory\n== sample_quick_fp32: failed (exit 3); going on\n")
    assert (logs / "degrade_numpy_cores.txt").read_text() == "table of scripts/bench_degrade.py\n"
