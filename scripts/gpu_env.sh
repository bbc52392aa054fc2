# Sourced by scripts that run on the lent GPU machine (train_default_model.sh, bench_gpu.sh).
#
#   source scripts/gpu_env.sh; refsr_env DEPS SITE
#
# Makes refsr and its dependencies importable by $PYTHON (default python3) and sets REFSR (the
# command line of the CLI) unless it is set. Where diffusers, open_clip and hnswlib import (here,
# in the project's venv) it changes nothing. Where they do not (the GPU machine's image has torch,
# accelerate, opencv, scikit-image, ... but not these), it unpacks DEPS/site.tar.xz (made by
# `scripts/train_default_model.sh pack`: the wheels of the missing packages, at the versions
# installed where it ran) into SITE and installs hnswlib there: the wheel in DEPS where it fits
# this Python and loads, else built from its source in DEPS (pip, no network; about 30 s), once: a
# later call finds SITE complete. SITE and, where refsr is not
# installed, this checkout go on PYTHONPATH, and the CLI runs as `$PYTHON -m refsr_cli`.
refsr_env() {
  local deps=$1 site=$2
  PYTHON=${PYTHON:-python3}
  if ! $PYTHON -c "import diffusers, open_clip, hnswlib" 2> /dev/null; then
    [[ "$site" = /* ]] || site="$PWD/$site"
    if [ ! -f "$site/.complete" ]; then
      [ -f "$deps/site.tar.xz" ] || { echo "$PYTHON cannot import diffusers, open_clip or hnswlib, and $deps/site.tar.xz is missing: run \`scripts/train_default_model.sh pack\` where they are installed and carry $deps" >&2; return 1; }
      echo "[$(date -u +%H:%M:%S)] deps: $deps -> $site"
      rm -rf "$site.partial" && mkdir -p "$site.partial"
      $PYTHON -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
          "$deps/site.tar.xz" "$site.partial"   # Python's lzma: no xz program needed there
      local pip=($PYTHON -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site.partial")
      # hnswlib: the wheel the pack built for this Python where it fits and loads, else built here from its source
      if "${pip[@]}" --only-binary hnswlib --find-links "$deps" hnswlib 2> /dev/null \
          && PYTHONPATH="$site.partial" $PYTHON -c "import hnswlib" 2> /dev/null; then
        echo "hnswlib: the wheel packed for this Python"
      else
        echo "hnswlib: built from its source"
        rm -rf "$site.partial"/hnswlib*
        "${pip[@]}" "$deps"/hnswlib-*.tar.gz || return 1
      fi
      touch "$site.partial/.complete" && rm -rf "$site" && mv "$site.partial" "$site"
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    $PYTHON -c "import diffusers, open_clip, hnswlib, lpips, piq" || return 1   # now, not in the middle of a stage
  fi
  (cd / && $PYTHON -c "import refsr" 2> /dev/null) || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if [ -z "${REFSR:-}" ]; then
    if command -v refsr > /dev/null; then REFSR=refsr; else REFSR="$PYTHON -m refsr_cli"; fi
  fi
}
