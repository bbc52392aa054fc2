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


def test_a_setting_the_library_refuses_is_a_usage_error_of_its_option(tmp_path, monkeypatch):
    """An OptionError from the library (the one place a setting is checked) reaches the shell as
    a usage error of the option it names (exit 2, the reason, no 'error:' line), also with -v;
    it survives a trip through pickle (worker processes) whole."""
    import pickle

    from refsr.errors import OptionError

    def refuse(*args, **kwargs):
        raise OptionError("max_images", "is too many for this test")

    monkeypatch.setattr("refsr.metrics.report.evaluate", refuse)
    pred = tmp_path / "pred"
    pred.mkdir()
    for flags in ([], ["-v"]):
        r = CliRunner().invoke(cli, [*flags, "evaluate", "--pred", str(pred), "--gt", str(pred), "-o",
                                     str(tmp_path / "r.json")])
        assert r.exit_code == 2 and "Invalid value for '--max-images': is too many for this test" in r.output, r.output
        assert "Usage: " in r.output and "evaluate [OPTIONS]" in r.output and "Traceback" not in r.output
    copy = pickle.loads(pickle.dumps(OptionError("ca_levels", "drops 0")))
    assert (copy.option, copy.reason, str(copy)) == ("ca_levels", "drops 0", "ca_levels: drops 0")


def test_bad_device_is_a_usage_error():
    result = CliRunner().invoke(cli, ["sample", "--device", "tpu", "x.png", "-o", "out"])
    assert result.exit_code == 2
    assert "tpu" in result.output


# ---------------------------------------------------------------------------------------
# The stage contract (refsr_cli/common.py)
# ---------------------------------------------------------------------------------------


def _photos(tmp_path, n=2):
    from conftest import small_photo

    from refsr.io import write_image

    names = ["astronaut", "coffee", "chelsea", "rocket"][:n]
    return [write_image(tmp_path / f"{name}.png", small_photo(name, (64, 64))) for name in names]


def test_refs_never_swallow_an_input(tmp_path):
    """`--refs r1.png r2.png` used to restore r2.png as an input: now a usage error, nothing written."""
    a, r1, r2 = _photos(tmp_path, 3)
    for refs in (["--refs", r1, r2], [f"--refs={r1}", r2]):
        result = CliRunner().invoke(cli, list(map(str, ["sample", a, *refs, "-o", tmp_path / "out"])))
        assert result.exit_code == 2, result.output
        assert "--refs takes one value" in result.output and f"{r1},{r2}" in result.output
        assert not (tmp_path / "out").exists()


def test_refs_take_a_comma_list_files_and_folders(tmp_path):
    from refsr_cli.sample import sample

    a, r1, r2 = _photos(tmp_path, 3)
    ctx = sample.make_context("sample", [str(a), "--refs", f"{r1},{r2}", "--refs", str(tmp_path), "-o", "out"])
    assert ctx.params["refs"] == (r1, r2, tmp_path) and ctx.params["inputs"] == (str(a),)
    result = CliRunner().invoke(cli, ["sample", str(a), "--refs", f"{r1},{tmp_path / 'gone.png'}", "-o", "out"])
    assert result.exit_code == 2 and "gone.png does not exist" in result.output


def test_a_path_both_input_and_reference_is_an_error(tmp_path):
    a, r1 = _photos(tmp_path, 2)
    for refs in (f"{r1},{a}", str(tmp_path)):  # the same file, or a folder that holds the input
        result = CliRunner().invoke(cli, ["sample", str(a), "--refs", refs, "-o", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert f"{a.name} is given both as an input and in --refs" in result.output


def test_global_flags_are_accepted_after_the_subcommand(tmp_path):
    from refsr_cli.common import hoist_global_flags
    from refsr_cli.sample import sample

    args = ["sample", "a.png", "-q", "--suffix", "-v", "-o", "out", "--verbose", "--", "-q"]
    assert hoist_global_flags(args, sample) == ["-q", "--verbose", "sample", "a.png", "--suffix", "-v", "-o", "out",
                                                "--", "-q"]
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image")
    quiet = CliRunner().invoke(cli, ["degrade", str(bad), "-o", str(tmp_path / "o"), "--crop", "none", "-q"])
    assert quiet.exit_code == 1 and "refsr degrade: error:" in quiet.output and "corrupt.png" in quiet.output
    verbose = CliRunner().invoke(cli, ["degrade", str(bad), "-o", str(tmp_path / "o"), "--crop", "none", "-v"])
    assert verbose.exit_code == 1 and "corrupt.png" in str(verbose.exception)  # -v: the exception itself


def test_inherited_world_size_never_shards_silently(tmp_path, monkeypatch):
    """WORLD_SIZE=4 RANK=2 refsr degrade a.png used to fail with "every input was unusable"."""
    (a,) = _photos(tmp_path, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    result = CliRunner().invoke(cli, ["-q", "degrade", str(a), "-o", str(tmp_path / "p"), "--crop", "32", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "WORLD_SIZE=4 is set but ignored" in result.stderr and "--shard auto" in result.stderr
    assert len((tmp_path / "p" / "manifest.jsonl").read_text().splitlines()) == 1


def test_shard_auto_takes_the_launcher_shard_and_says_so(monkeypatch, capsys):
    from refsr_cli.common import _check_shard

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _check_shard(None, None, "auto") is None and _check_shard(None, None, None) is None
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert _check_shard(None, None, "auto") == (3, 4)
    assert capsys.readouterr().err.strip().splitlines() == ["refsr: --shard auto: RANK 3 of WORLD_SIZE 4 takes shard 3/4"]
    assert _check_shard(None, None, "1/2") == (1, 2) and capsys.readouterr().err == ""


def test_one_workers_default_everywhere(monkeypatch):
    """Every --workers defaults to the CPUs this process may use (its affinity mask, not the
    node's core count), shared among a launcher's local processes."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)))
    commands = {}
    for name in SUBCOMMANDS:  # a group's subcommands (train STAGE) count one by one
        command = cli.get_command(None, name)
        subs = getattr(command, "commands", None)
        commands.update({f"{name} {sub}": c for sub, c in subs.items()} if subs else {name: command})
    having = {name: p for name, command in commands.items() for p in command.params if p.name == "workers"}
    assert sorted(having) == ["degrade", "index-refs", "train autoencoder", "train diffusion", "train matcher"]
    for name, option in having.items():
        assert "CPUs this process may use" in option.help
        ctx = commands[name].make_context(name, ["--help"], resilient_parsing=True)
        assert option.process_value(ctx, None) == 7
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert option.process_value(ctx, None) == 3
        monkeypatch.delenv("LOCAL_WORLD_SIZE")


def test_index_refs_workers_reach_the_library(tmp_path, monkeypatch):
    import os

    import refsr.retrieval.index as index

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)))
    seen = {}
    monkeypatch.setattr(index, "index_refs", lambda *a, **kw: seen.update(kw) or (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(cli, ["index-refs", str(tmp_path), "--index", str(tmp_path / "idx")])
    assert seen["workers"] == 7


def test_option_names_mean_one_thing():
    """--model is a refsr model; the OpenCLIP architecture is --clip-model (--model hidden, deprecated)."""
    index_refs = cli.get_command(None, "index-refs")
    params = {p.name: p for p in index_refs.params}
    assert "--clip-model" in params["clip_model"].opts and params["deprecated_model"].hidden
    help_text = run("index-refs", "--help").output
    assert "--clip-model" in help_text and "--model" not in help_text
    assert "Model folder from `refsr train`" in next(p.help for p in cli.get_command(None, "sample").params
                                                     if p.name == "model")


def _all_commands():
    commands = {}
    for name in SUBCOMMANDS:  # a group's subcommands (train STAGE) count one by one
        command = cli.get_command(None, name)
        subs = getattr(command, "commands", None)
        commands.update({f"{name} {sub}": c for sub, c in subs.items()} if subs else {name: command})
    return commands


def test_shared_option_names_say_one_thing():
    """--overwrite says the same everywhere (train: its own run); --config is a model config
    (degrade: --degradation-config); --patch is the matcher's training patch (match: --window);
    the old names are hidden; every sharded stage has --merge."""
    having = {name: {p.name: p for p in c.params} for name, c in _all_commands().items()}
    for name, params in having.items():
        if "overwrite" in params:
            expected = ("Start the run again, deleting only what the run made." if name.startswith("train")
                        else "Redo outputs that already exist (default: skip them and resume).")
            assert params["overwrite"].help == expected, name
        visible = {o for p in params.values() if not getattr(p, "hidden", False) for o in p.opts}
        if "--config" in visible:
            assert name in ("train autoencoder", "train diffusion"), name
        if "--patch" in visible:
            assert name == "train matcher", name
    assert having["degrade"]["deprecated_config"].hidden and "--degradation-config" in having["degrade"]["degradation_config"].opts
    assert having["match"]["deprecated_patch"].hidden and "--window" in having["match"]["window"].opts
    for name in ("degrade", "index-refs", "match", "sample"):
        assert "--merge" in {o for p in having[name].values() for o in p.opts}, name


def test_match_defaults_to_the_shipped_matcher():
    from refsr.models.matcher import SHIPPED_MATCHER

    matcher = next(p for p in cli.get_command(None, "match").params if p.name == "matcher")
    assert matcher.default == "shipped" and (SHIPPED_MATCHER / "config.json").is_file()


def test_choice_lists_come_from_the_library():
    from refsr.degrade.pipeline import SCALES
    from refsr.metrics.fidelity import COLORS
    from refsr.metrics.perceptual import LPIPS_NETS
    from refsr.retrieval.match import GROUP_BY, QUERY_KINDS
    from refsr.sample import COLOR_FIXES, PRECISIONS, list_samplers

    def choices(command, name):
        return list(next(p for p in cli.get_command(None, command).params if p.name == name).type.choices)

    assert choices("sample", "sampler") == list_samplers()
    assert choices("sample", "precision") == list(PRECISIONS)
    assert choices("sample", "color_fix") == choices("demo", "color_fix") == list(COLOR_FIXES)
    assert choices("degrade", "scale") == [str(s) for s in SCALES]
    assert choices("evaluate", "color") == list(COLORS) and choices("evaluate", "lpips_net") == list(LPIPS_NETS)
    assert choices("match", "query_kind") == list(QUERY_KINDS) and choices("match", "group_by") == list(GROUP_BY)


def test_every_import_is_a_declared_dependency():
    """`pip install .` alone must run everything, `refsr demo` included (scikit-image's photos)."""
    import ast
    import importlib.metadata as md
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower().replace("_", "-")
                for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    modules = set()
    for path in [*(root / "refsr").rglob("*.py"), *(root / "refsr_cli").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    dists = md.packages_distributions()
    third = {m for m in modules - set(sys.stdlib_module_names) - {"refsr", "refsr_cli"}}
    missing = {m: dists.get(m) for m in third
               if not any(d.lower().replace("_", "-") in declared for d in dists.get(m, [m]))}
    assert "skimage" in third and not missing, missing
