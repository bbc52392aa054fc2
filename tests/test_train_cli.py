"""`refsr train STAGE DATA`: every loop option reaches the loop for every stage, options of
another stage are usage errors, the old `--stage`/`--data` spelling still runs, and
`--help` imports no torch. The stages themselves are replaced by stand-ins: what is tested
is the wiring from the command line to `run_training`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from click.testing import CliRunner

from refsr.constants import MATCHER_TRAIN_DEFAULTS
from refsr_cli.main import cli

STAGES = ("autoencoder", "diffusion", "matcher")

# TrainOptions field -> (command-line arguments, the value the loop must receive); every
# value differs from every stage's default
LOOP_OPTIONS = {
    "steps": (["--steps", "7"], 7),
    "batch_size": (["--batch-size", "3"], 3),
    "grad_accum": (["--grad-accum", "2"], 2),
    "lr": (["--lr", "0.0123"], 0.0123),
    "lr_schedule": (["--lr-schedule", "constant"], "constant"),
    "warmup_steps": (["--warmup", "11"], 11),
    "ema_decay": (["--ema-decay", "0.5"], 0.5),
    "grad_clip": (["--grad-clip", "0.25"], 0.25),
    "mixed_precision": (["--mixed-precision", "bf16"], "bf16"),
    "checkpoint_every": (["--checkpoint-every", "13"], 13),
    "keep_checkpoints": (["--keep-checkpoints", "5"], 5),
    "validate_every": (["--validate-every", "17"], 17),
    "log_every": (["--log-every", "19"], 19),
    "max_minutes": (["--max-minutes", "0.0001"], 0.0001),
    "resume": (["--resume"], True),
    "overwrite": (["--overwrite"], True),
    "seed": (["--seed", "5"], 5),
    "device": (["--device", "cpu"], "cpu"),
    "workers": (["--workers", "0"], 0),  # the default is at least 1 CPU
}


@pytest.fixture
def captured(tmp_path, monkeypatch):
    """Stand-ins for the three stages and run_training; returns ``{stage: command-line
    prefix}`` and the record of what reached the loop (``seen["opts"]``, and for the
    matcher, which claims its run folder before the loop, ``seen["claim"]``)."""
    import refsr.train
    import refsr.train.autoencoder
    import refsr.train.diffusion
    import refsr.train.matcher as matcher

    from refsr.io import write_image

    seen = {}

    def run_training(stage, opts):
        seen["opts"] = opts
        raise SystemExit(0)  # stop here (RefsrGroup passes SystemExit through)

    def claim(run, resume, overwrite, stage=None):
        seen["claim"] = {"resume": resume, "overwrite": overwrite}

    for module, name in ((refsr.train.autoencoder, "AutoencoderStage"), (refsr.train.diffusion, "DiffusionStage"),
                         (matcher, "MatcherStage")):
        monkeypatch.setattr(module, name, lambda *a, **kw: object())
    monkeypatch.setattr(refsr.train, "run_training", run_training)
    monkeypatch.setattr(matcher, "run_training", run_training)
    monkeypatch.setattr(matcher, "claim_run_folder", claim)
    monkeypatch.setattr(matcher, "write_json", lambda *a, **kw: None)
    import numpy as np

    for i in range(2):
        write_image(tmp_path / "photos" / f"{i}.png", np.full((16, 16, 3), 0.3 * i, "float32"))
    (tmp_path / "pairs.jsonl").write_text("")
    (tmp_path / "vq").mkdir()
    run = ["-o", str(tmp_path / "run")]
    prefixes = {
        "autoencoder": ["train", "autoencoder", str(tmp_path / "photos"), "--config", "tiny", *run],
        "diffusion": ["train", "diffusion", str(tmp_path / "pairs.jsonl"), "--vqvae", str(tmp_path / "vq"),
                      "--config", "tiny", *run],
        "matcher": ["train", "matcher", str(tmp_path / "photos"), "--holdout", "0", *run],
    }
    return prefixes, seen


def _invoke(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


def test_the_table_covers_every_loop_option():
    from refsr.train import TrainOptions

    assert set(LOOP_OPTIONS) == {f.name for f in dataclasses.fields(TrainOptions)} - {"output", "extra"}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", list(LOOP_OPTIONS))
def test_every_loop_option_reaches_the_loop(captured, stage, name):
    """The regression test of `train --stage matcher` ignoring --max-minutes."""
    prefixes, seen = captured
    args, value = LOOP_OPTIONS[name]
    _invoke([*prefixes[stage], *args])
    assert seen["opts"].output.name == "run"
    if stage == "matcher" and name == "overwrite":  # the matcher claims (and cleans) its run folder before the loop
        assert seen["claim"]["overwrite"] is True and seen["opts"].overwrite is False
    else:
        assert getattr(seen["opts"], name) == value


@pytest.mark.parametrize("stage", STAGES)
def test_unset_loop_options_take_the_stage_defaults(captured, stage):
    from refsr.models import load_config

    prefixes, seen = captured
    _invoke(prefixes[stage])
    defaults = MATCHER_TRAIN_DEFAULTS if stage == "matcher" else load_config("tiny")["train"]
    for name in ("batch_size", "lr", "lr_schedule", "warmup_steps", "ema_decay", "grad_clip", "validate_every"):
        assert getattr(seen["opts"], name) == defaults[name], name


@pytest.mark.parametrize("stage,option", [
    ("matcher", ["--kind", "ldm"]), ("matcher", ["--config", "tiny"]), ("matcher", ["--no-lpips"]),
    ("matcher", ["--matches", "m.jsonl"]), ("matcher", ["--vqvae", "vq"]), ("autoencoder", ["--depth", "2"]),
    ("autoencoder", ["--arch", "resnet18"]), ("autoencoder", ["--kind", "ldm"]), ("diffusion", ["--depth", "2"]),
    ("diffusion", ["--holdout", "0.2"]), ("diffusion", ["--no-lpips"]), ("diffusion", ["--decode", "continuous"]),
])
def test_an_option_of_another_stage_is_a_usage_error(captured, stage, option):
    prefixes, seen = captured
    result = CliRunner().invoke(cli, [*prefixes[stage], *option])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert "No such option" in error and option[0] in error and "opts" not in seen


def test_the_old_spelling_still_runs_with_a_warning(captured, tmp_path):
    prefixes, seen = captured
    result = _invoke(["train", "--stage", "matcher", "--data", str(tmp_path / "photos"), "--holdout", "0",
                      "-o", str(tmp_path / "run"), "--max-minutes", "0.5"])
    assert seen["opts"].max_minutes == 0.5
    assert result.stderr.strip().splitlines() == [
        "warning: `refsr train --stage matcher --data DATA` is deprecated: write `refsr train matcher DATA ...`"]
    result = _invoke(["train", "autoencoder", "--data", str(tmp_path / "photos"), "--config", "tiny",
                      "-o", str(tmp_path / "run"), "--steps", "3"])
    assert seen["opts"].steps == 3 and "`refsr train --data DATA` is deprecated" in result.stderr
    assert CliRunner().invoke(cli, ["train", "--stage", "nothing", "--data", str(tmp_path)]).exit_code == 2


def test_global_flags_after_the_stage(captured):
    prefixes, seen = captured
    result = _invoke([*prefixes["autoencoder"], "-q", "--steps", "4"])
    assert seen["opts"].steps == 4 and result.stderr == ""


def test_the_diffusion_stage_checks_its_inputs(captured, tmp_path):
    prefixes, seen = captured
    folder = CliRunner().invoke(cli, ["train", "diffusion", str(tmp_path / "photos"), "--vqvae", str(tmp_path / "vq"),
                                      "-o", str(tmp_path / "run")])
    assert folder.exit_code == 2 and "reads a pair manifest (.jsonl)" in folder.output
    no_vq = CliRunner().invoke(cli, ["train", "diffusion", str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "run")])
    assert no_vq.exit_code == 2 and "--vqvae DIR" in no_vq.output and "opts" not in seen


def test_choice_lists_come_from_the_library():
    from refsr.models.ldm import KINDS, PREDICTION_TYPES
    from refsr.models.matcher import EXPORT_DTYPES
    from refsr.train.autoencoder import DECODE_MODES
    from refsr.train.loop import LR_SCHEDULES, MIXED_PRECISION

    group = cli.get_command(None, "train")

    def choices(stage, name):
        return tuple(next(p for p in group.commands[stage].params if p.name == name).type.choices)

    assert choices("diffusion", "kind") == KINDS and choices("diffusion", "prediction_type") == PREDICTION_TYPES
    assert choices("autoencoder", "decode") == DECODE_MODES and choices("matcher", "export_dtype") == EXPORT_DTYPES
    for stage in STAGES:
        assert choices(stage, "lr_schedule") == LR_SCHEDULES and choices(stage, "mixed_precision") == MIXED_PRECISION


def test_help_imports_no_torch():
    code = """
import sys
from refsr_cli.main import cli
for args in (["train", "--help"], ["train", "autoencoder", "--help"], ["train", "diffusion", "--help"],
             ["train", "matcher", "--help"], ["train", "--stage", "matcher", "--help"]):
    try:
        cli(args, standalone_mode=False)
    except SystemExit:
        pass
    heavy = sorted(m for m in ("torch", "diffusers", "accelerate", "open_clip") if m in sys.modules)
    assert not heavy, (args, heavy)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: train matcher [OPTIONS] DATA" in proc.stdout or "train matcher [OPTIONS] DATA" in proc.stdout
