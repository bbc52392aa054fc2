"""scripts/gpu_env.sh: on a machine whose Python lacks diffusers, open_clip and hnswlib (the lent
GPU machine's image), refsr_env sets them up from the packed deps, once, and runs the CLI from the
checkout. Rehearsed with a Python started without its site-packages (`-S`) plus pip and setuptools
alone, and a pack of stand-in packages (the real one needs downloads: `train_default_model.sh pack`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bare_python(tmp: Path) -> Path:
    """A python3 that imports the standard library, pip and setuptools, and nothing else of ours."""
    farm = tmp / "farm"
    farm.mkdir()
    purelib = Path(sysconfig.get_paths()["purelib"])
    for name in ("pip", "setuptools", "pkg_resources", "_distutils_hack"):
        if (purelib / name).exists():
            (farm / name).symlink_to(purelib / name)
    wrapper = tmp / "python3"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{farm}" exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _deps(tmp: Path, wheel: str | None = None) -> Path:
    """site.tar.xz with stand-in modules, an hnswlib source package to build with pip and, where
    ``wheel`` is given, an hnswlib wheel whose module is that code (the pack's prebuilt wheel)."""
    deps = tmp / "deps"
    deps.mkdir()
    with tarfile.open(deps / "site.tar.xz", "w:xz") as tar:
        for name in ("diffusers", "open_clip", "lpips", "piq"):
            data = f"NAME = {name!r}\n".encode()
            info = tarfile.TarInfo(f"./{name}/__init__.py")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    src = tmp / "hnswlib-0.0.1"
    src.mkdir()
    (src / "hnswlib.py").write_text("BUILT = 'from source'\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "hnswlib"\nversion = "0.0.1"\n[tool.setuptools]\npy-modules = ["hnswlib"]\n')
    with tarfile.open(deps / "hnswlib-0.0.1.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="hnswlib-0.0.1")
    if wheel is not None:
        info = "hnswlib-0.0.1.dist-info"
        with zipfile.ZipFile(deps / "hnswlib-0.0.1-py3-none-any.whl", "w") as whl:
            whl.writestr("hnswlib.py", wheel)
            whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: hnswlib\nVersion: 0.0.1\n")
            whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            whl.writestr(f"{info}/RECORD", f"hnswlib.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return deps


def _refsr_env(python: Path, deps: Path, site: Path, then: str) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail; source scripts/gpu_env.sh; refsr_env "{deps}" "{site}"; {then}'
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REFSR")}
    env.update(PYTHON=str(python), PIP_NO_INDEX="1", PATH="/usr/bin:/bin")
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("wheel, hnswlib", [
    (None, "from source"),  # no Python 3.12 where the pack ran: built there
    ("BUILT = 'wheel'\n", "wheel"),  # the packed wheel: no compiler, no build time
    ("raise ImportError('GLIBCXX_3.4.29 not found')\n", "from source"),  # a wheel that does not load there
])
def test_refsr_env_sets_up_the_missing_packages_once_and_runs_the_cli_from_the_checkout(tmp_path, wheel, hnswlib):
    pytest.importorskip("setuptools", reason="the stand-in hnswlib is built with setuptools, as the real one")
    python, deps, site = _bare_python(tmp_path), _deps(tmp_path, wheel), tmp_path / "site"
    check = ('$PYTHON -c "import diffusers, open_clip, hnswlib, refsr; print(hnswlib.BUILT, refsr.__file__)"; '
             'echo "REFSR=$REFSR"')
    first = _refsr_env(python, deps, site, check)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ("hnswlib: the wheel packed for this Python" if hnswlib == "wheel" else "hnswlib: built from its source") \
        in first.stdout
    assert f"{hnswlib} {ROOT / 'refsr' / '__init__.py'}" in first.stdout  # refsr from this checkout
    assert len(list(site.glob("hnswlib-*.dist-info"))) == 1  # one install, not a broken wheel beside the build
    assert f"REFSR={python} -m refsr_cli" in first.stdout  # no refsr on PATH
    assert (site / ".complete").is_file() and (site / "diffusers" / "__init__.py").is_file()
    assert not (tmp_path / "site.partial").exists()

    (deps / "site.tar.xz").unlink()  # a second command on the same machine: set up already, nothing read
    again = _refsr_env(python, deps, site, check)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "hnswlib:" not in again.stdout and f"{hnswlib} {ROOT}" in again.stdout


def test_refsr_env_without_deps_stops_with_what_to_do(tmp_path):
    python = _bare_python(tmp_path)
    run = _refsr_env(python, tmp_path / "nodeps", tmp_path / "site", "echo reached")
    assert run.returncode == 1 and "reached" not in run.stdout
    assert "cannot import diffusers, open_clip or hnswlib" in run.stderr
    assert "scripts/train_default_model.sh pack" in run.stderr and not (tmp_path / "site").exists()


def test_refsr_env_changes_nothing_where_refsr_is_installed(tmp_path):
    run = _refsr_env(Path(sys.executable), tmp_path / "nodeps", tmp_path / "site",
                     'echo "PYTHONPATH=${PYTHONPATH:-}"')
    assert run.returncode == 0, run.stdout + run.stderr
    assert "deps:" not in run.stdout and not (tmp_path / "site").exists()
    assert "PYTHONPATH=\n" in run.stdout  # refsr installed (the README's install): nothing added
