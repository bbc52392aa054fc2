"""Progress bars for long work (tqdm on stderr), silenced globally by ``refsr -q``."""

from __future__ import annotations

import os

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar off (``True``) or on."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet or os.environ.get("REFSR_QUIET", "") not in ("", "0")


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled when quiet."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", is_quiet())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
