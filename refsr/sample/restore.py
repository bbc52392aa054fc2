"""The ``sample`` stage: LR files in, restored PNG files and ``run.json`` out.

For each input ``x.png`` it writes ``OUT/x<suffix>.png`` in the input's form (bit depth,
gray, alpha upsampled) and appends its record to a hidden run log as soon as it is written;
the logs are merged into ``OUT/run.json`` at the end (or by the next run, after a crash).
A rerun skips outputs that exist (unless ``overwrite``) and is refused if its settings
differ from those the folder's outputs were made with (unless ``overwrite``: the older
records then keep their own settings); ``shard=(K, N)`` processes every N-th input from K, and
since each image's noise is seeded from ``(seed, stem)`` the shards of a run together
give the same bytes as one unsharded run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, RefSRError
from ..io import (Image, image_to_tensor, list_images, read_image, read_json, read_pair_manifest, safe_name,
                  select_shard, write_json, write_like)
from ..progress import progress
from .core import SampleSettings, restore_tensor
from .references import Fragment, MatchTable, load_global_refs, load_match_refs

log = logging.getLogger(__name__)

RUN_FORMAT = "refsr.sample/1"


@dataclass
class InputItem:
    """One LR input: its path and, if it came from a pair manifest, the pair id."""

    path: Path
    pair_id: str | None = None


@dataclass
class SampleSummary:
    """What a ``sample`` run did (returned to the CLI for its report)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    run_json: Path | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def collect_inputs(inputs) -> list[InputItem]:
    """Expand LR files, folders and pair manifests (their ``lr`` images) into items.

    Raises:
        InputError: a missing path, a non-image file, or nothing found (named).
    """
    items: list[InputItem] = []
    for entry in inputs:
        path = Path(entry)
        if path.suffix.lower() == ".jsonl":
            items.extend(InputItem(Path(r["lr_path"]), str(r["id"])) for r in read_pair_manifest(path))
        else:
            items.extend(InputItem(p) for p in list_images([path]))
    seen, unique = set(), []
    for item in items:
        if item.path.resolve() not in seen:
            seen.add(item.path.resolve())
            unique.append(item)
    if not unique:
        raise InputError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return unique


def output_paths(items: list[InputItem], out_dir: Path, suffix: str) -> list[Path]:
    """``OUT/<stem><suffix>.png`` for each item.

    Raises:
        InputError: two inputs with the same stem (their outputs would collide), naming both.
    """
    taken: dict[str, Path] = {}
    outs = []
    for item in items:
        name = safe_name(f"{item.path.stem}{suffix}") + ".png"  # a --suffix "/../x" stays in OUT
        if name in taken:
            raise InputError(f"{item.path} and {taken[name]} would both be written to {out_dir / name}; rename one")
        taken[name] = item.path
        outs.append(out_dir / name)
    return outs


def _refs_tensor(frags: list[Fragment], device):
    """Fragments -> (1, R, 3, S, S) float32 in [-1, 1], or None for no fragments."""
    import torch

    if not frags:
        return None
    return torch.stack([image_to_tensor(f.pixels, (-1, 1), device) for f in frags])[None]


def outscale_image(rgb: np.ndarray, lr_size: tuple[int, int], outscale: float | None) -> np.ndarray:
    """Resize (H, W, 3) ``rgb`` to ``round(lr_size * outscale)`` with LANCZOS (no-op if None
    or already that size)."""
    if outscale is None:
        return rgb
    h, w = (max(1, round(s * outscale)) for s in lr_size)
    if (h, w) == rgb.shape[:2]:
        return rgb
    return np.clip(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LANCZOS4), 0.0, 1.0)


def check_output_size(path, lr_size: tuple[int, int], scale: int, outscale: float | None) -> None:
    """Refuse, before any sampling, an output of under 1 pixel a side or over the pixel
    limit (:func:`refsr.io.max_pixels`): the model's ``scale`` output and the ``outscale`` one.

    Raises:
        InputError: naming the input, the sizes and the option to change.
    """
    from ..io import check_pixels

    h, w = lr_size
    check_pixels(f"{path} (restored at x{scale})", w * scale, h * scale)
    if outscale is not None:
        ow, oh = w * outscale, h * outscale
        if min(ow, oh) < 1:
            raise InputError(f"{path}: --outscale {outscale:g} gives a {ow:.2f}x{oh:.2f} output from {w}x{h}; "
                             "choose an --outscale that leaves at least 1 pixel a side")
        check_pixels(f"{path} (output at --outscale {outscale:g})", round(ow), round(oh))


# ---------------------------------------------------------------------------------------
# run.json
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (concurrent shards merging run.json)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


IGNORED_SETTINGS = ("device",)  # may differ between shards and reruns (same bytes per device)


def _changed(old: dict, new: dict) -> list[str]:
    """Settings that differ between two runs (keys both record, except ``device``)."""
    return sorted(k for k in new if k in old and k not in IGNORED_SETTINGS and old[k] != new[k])


class RunLog:
    """This run's finished images, appended (and fsynced) one line at a time to a hidden
    ``OUT/.run-*.jsonl`` as they are written, so that an interruption (Ctrl-C, kill -9,
    full disk) loses no record. The first line holds the run's settings. The file is
    ``flock``-ed while its run lives; :func:`merge_run_logs` folds the logs of finished or
    dead runs into ``run.json`` and removes them."""

    def __init__(self, out_dir: Path, settings: dict):
        import fcntl
        import os
        import tempfile

        from ..io import file_mode

        out_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".run-", suffix=".jsonl", dir=out_dir)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, file_mode())
        self.path, self._file = Path(name), os.fdopen(fd, "w", encoding="utf-8")
        self._append({"format": RUN_FORMAT, "settings": settings})

    def _append(self, obj: dict) -> None:
        import json
        import os

        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def add(self, name: str, record: dict) -> None:
        self._append({"image": name, "record": record})

    def close(self) -> None:
        self._file.close()  # releases the lock


def _read_run_log(path: Path) -> tuple[dict | None, dict[str, dict]]:
    """``(settings, {output name: record})`` of a run log; a torn last line is ignored."""
    import json

    settings, images = None, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("settings"), dict) and settings is None:
            settings = obj["settings"]
        elif isinstance(obj, dict) and settings is not None and isinstance(obj.get("record"), dict):
            images[str(obj.get("image"))] = obj["record"]
    return settings, images


def _merge_into(run: dict, settings: dict, images: dict[str, dict]) -> dict:
    """``run`` (the content of run.json) with ``images`` made with ``settings`` merged in:
    the top-level settings become ``settings``; earlier records made with other settings
    keep theirs in their own ``settings`` key."""
    previous = {k: v for k, v in run.items() if k not in ("images", "format")}
    merged = dict(run.get("images", {}))
    if previous and _changed(previous, settings):
        merged = {name: rec if "settings" in rec else {**rec, "settings": previous} for name, rec in merged.items()}
    merged.update(images)
    return {"format": RUN_FORMAT, **settings, "images": dict(sorted(merged.items()))}


def merge_run_logs(out_dir: Path) -> Path:
    """Fold every run log of ``out_dir`` whose run has ended (its lock is free) into
    ``OUT/run.json`` (under a lock, written atomically), then remove those logs."""
    import fcntl

    path = out_dir / "run.json"
    with _locked(out_dir / ".run.json.lock"):
        run = read_json(path) if path.is_file() else {}
        done, merged = [], False
        for log_path in sorted(out_dir.glob(".run-*.jsonl"), key=lambda q: q.stat().st_mtime_ns):
            with open(log_path, "rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run still going: it merges its own log when it ends
                settings, images = _read_run_log(log_path)
                if settings is not None:
                    merged = merged or bool(images)  # a run that wrote nothing claims nothing
                    run = _merge_into(run, settings, images) if images else run
                    done.append(log_path)
        if merged:
            write_json(path, run)
        for log_path in done:
            log_path.unlink(missing_ok=True)
    return path


def check_run_settings(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to add outputs made with ``settings`` to a folder whose outputs were made with
    other settings (run.json, or the log of a run still going), unless ``overwrite``.

    Raises:
        InputError: naming the folder, the settings that differ and what to do.
    """
    if overwrite:
        return
    path = out_dir / "run.json"
    earlier = [read_json(path)] if path.is_file() else []
    earlier += [st for st in (_read_run_log(q)[0] for q in out_dir.glob(".run-*.jsonl")) if st is not None]
    for old in earlier:
        changed = _changed({k: v for k, v in old.items() if k not in ("images", "format")}, settings)
        if changed:
            what = ", ".join(f"{k} {old[k]!r} -> {settings[k]!r}" for k in changed[:4])
            raise InputError(f"{out_dir}: holds outputs made with other settings ({what}); pass --overwrite to "
                             "redo them with these settings, or use another output folder")


def _run_settings(model_name: str, model, settings: SampleSettings, seed: int, device, extra: dict) -> dict:
    s = asdict(settings)
    s.pop("cache_context", None)
    return {"model": model_name, "kind": model.kind, "scale": model.scale, **s, "seed": int(seed),
            "device": str(device), **extra}


def _relative(path: Path, out_dir: Path) -> str:
    from ..io import relative_path

    return relative_path(out_dir / "run.json", path)


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------


class _References:
    """Chooses each input's fragments: ``--refs`` for all, or its ``--matches`` record."""

    def __init__(self, model, refs, matches, max_refs, warnings: list[str]):
        self.size = int(model.ref_size)
        self.max_refs = max_refs if max_refs is not None else int(getattr(model, "max_refs", 10))
        self.table = MatchTable.read(matches) if matches else None
        self.global_refs = load_global_refs(list(refs), self.size, self.max_refs) if refs else []
        self.use = model.kind == "ldm-ca"
        self.unmatched: list[str] = []
        if not self.use and (refs or matches):
            warnings.append("model kind 'ldm' has no reference branch: the references are ignored")
        if self.use and not (refs or matches):
            warnings.append("model kind 'ldm-ca' given no references (--refs/--matches): the branch adds nothing")

    def for_item(self, item: InputItem) -> list[Fragment]:
        if not self.use:
            return []
        if self.table is None:
            return self.global_refs
        record = self.table.lookup(item.path, item.pair_id)
        if record is None:
            self.unmatched.append(str(item.path))
        return self.global_refs + load_match_refs(record, self.size, self.max_refs)


def _restore_one(model, item: InputItem, image: Image, frags, settings, seed, device, outscale):
    """Restore one decoded image; returns (H', W', 3) float32 in [0, 1]."""
    import torch

    from ..seeding import torch_generator_for

    generator = torch_generator_for(seed, item.path.stem)
    lr = image_to_tensor(image.rgb, (-1, 1), device, batch=True)
    refs = _refs_tensor(frags, device)
    try:
        out = restore_tensor(model, lr, refs, settings=settings, generator=generator)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise RefSRError(
            f"{item.path}: CUDA out of memory at {image.width}x{image.height} px; use a smaller --tile "
            f"(now {settings.tile}; e.g. 64) or a smaller --batch-size (now {settings.batch_size})"
        ) from None
    rgb = ((out[0].permute(1, 2, 0).float().cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)
    return outscale_image(rgb, (image.height, image.width), outscale)


def sample_files(
    inputs,
    out_dir,
    model=None,
    refs=(),
    matches=None,
    settings: SampleSettings | None = None,
    seed: int = 0,
    device="auto",
    outscale: float | None = None,
    suffix: str = "_sr",
    shard=None,
    overwrite: bool = False,
    max_refs: int | None = None,
) -> SampleSummary:
    """Restore LR images into ``out_dir`` (see the module docstring).

    Args:
        inputs: LR image files, folders, or pair manifests (``.jsonl``, their ``lr`` images).
        model: a model folder, a Hugging Face repo id, a loaded ``RefSRModel``, or None for
            the shipped default model.
        refs: reference files/folders used for every input (centre square of each image).
        matches: a ``matches.jsonl`` giving each input its own fragments.
        settings: sampler, steps, tiling, precision, colour fix (:class:`SampleSettings`).
        seed: each image's noise comes from ``(seed, input stem)``.
        outscale: final scale relative to the input (LANCZOS); None keeps the model's scale.
        shard: ``(K, N)``: only every N-th input, from K.
        max_refs: at most this many fragments per image (default: the model's ``max_refs``).

    Raises:
        InputError: unreadable inputs or references, bad manifests, colliding outputs (named).
        MissingWeightsError: the model cannot be found offline.
    """
    from ..device import resolve_device
    from .loading import load_model

    settings = settings or SampleSettings()
    settings.check()
    start, out_dir, summary = time.perf_counter(), Path(out_dir), SampleSummary()
    device = resolve_device(device) if isinstance(device, str) else device
    items = select_shard(collect_inputs(inputs), shard)
    outs = output_paths(items, out_dir, suffix)
    if isinstance(model, (str, Path)) or model is None:
        model, model_path = load_model(model, device)
        model_name = str(model_path)
    else:
        model, model_name = model.to(device).eval(), getattr(model, "name_or_path", type(model).__name__)
    chooser = _References(model, refs, matches, max_refs, summary.warnings)
    extra = {"outscale": outscale, "suffix": suffix, "refs": [str(r) for r in refs],
             "matches": str(matches) if matches else None}
    run_settings = _run_settings(model_name, model, settings, seed, device, extra)
    merge_run_logs(out_dir)  # records of an interrupted earlier run
    check_run_settings(out_dir, run_settings, overwrite)
    run_log = RunLog(out_dir, run_settings)
    try:
        for item, out_path in progress(list(zip(items, outs)), desc="images", unit="img"):
            if out_path.exists() and not overwrite:
                summary.skipped.append(out_path)
                continue
            t0 = time.perf_counter()
            image = read_image(item.path)
            check_output_size(item.path, (image.height, image.width), model.scale, outscale)
            frags = chooser.for_item(item)
            rgb = _restore_one(model, item, image, frags, settings, seed, device, outscale)
            write_like(out_path, rgb, image)
            summary.written.append(out_path)
            run_log.add(out_path.name, {
                "input": _relative(item.path, out_dir), "pair_id": item.pair_id,
                "size": [image.width, image.height], "output_size": [rgb.shape[1], rgb.shape[0]],
                "refs": [dict(f.record(), path=_relative(f.path, out_dir)) for f in frags],
                "seconds": round(time.perf_counter() - t0, 3),
            })
    except BaseException:
        run_log.close()
        with contextlib.suppress(Exception):  # e.g. a full disk: the log stays for the next run to merge
            merge_run_logs(out_dir)
        raise
    run_log.close()
    summary.run_json = merge_run_logs(out_dir)
    if chooser.unmatched:
        summary.warnings.append(f"{len(chooser.unmatched)} input(s) have no record in {matches} and ran without "
                                f"references: {', '.join(chooser.unmatched[:5])}")
    summary.seconds = time.perf_counter() - start
    return summary
