"""The ``degrade`` stage over files: inputs -> pair ids -> crops -> HR/LR PNGs + manifest.

Layout written under ``out``: ``hr/<id>.png``, ``lr/<id>.png`` and ``manifest.jsonl`` (one
``refsr.pairs/1`` record per pair), or ``manifest.shard-K-of-N.jsonl`` for shard K of N;
once every part exists they are merged into ``manifest.jsonl`` (also ``merge_shards``).
While running, finished records are checkpointed to a hidden ``.<manifest>.progress``
file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import io
from ..errors import InputError, WorkerError
from ..progress import progress
from ..shards import finish_shard, merge_jsonl, part_path
from .numpy_exec import degrade_image
from .params import resolve_config, sample_crop, sample_params

log = logging.getLogger("refsr.degrade")
SCALES = (1, 2, 3, 4, 8)
MIN_SIZE_FACTOR = 8  # an input must be at least scale x 8 pixels on each side
CHECKPOINT_SECONDS = 20.0


@dataclass
class DegradeResult:
    """What a run did: counts, the bad inputs skipped, and the manifest written."""

    manifest: Path
    written: int = 0
    skipped: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    merged: bool = False


def pair_ids(sources: list[Path], crops_per_image: int) -> list[tuple[str, Path, int]]:
    """``(id, source, crop index)`` for every pair: ``<stem>_<k>``; stems shared by several
    sources get ``-<6 hex of the path>`` so ids stay unique and stable."""
    counts = Counter(p.stem for p in sources)
    plan = []
    for src in sources:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", src.stem)
        if counts[src.stem] > 1:
            stem += "-" + hashlib.sha1(src.as_posix().encode()).hexdigest()[:6]
        plan.extend((f"{stem}_{k}", src, k) for k in range(crops_per_image))
    return plan


def crop_region(img: np.ndarray, x: int, y: int, crop: int) -> tuple[np.ndarray, list[int], list[int]]:
    """The ``crop`` x ``crop`` window at (x, y), reflect-101 padded at the right/bottom
    where the image is smaller (as Real-ESRGAN). Returns (window, [x, y, w, h] in the
    source, [pad_right, pad_bottom])."""
    h, w = img.shape[:2]
    cw, ch = min(crop, w), min(crop, h)
    window = img[y : y + ch, x : x + cw]
    pad = [crop - cw, crop - ch]
    if pad[0] or pad[1]:
        window = cv2.copyMakeBorder(window, 0, pad[1], 0, pad[0], cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(window), [x, y, cw, ch], pad


def _select(task: dict, image: io.Image) -> tuple[np.ndarray, list[int], list[int]]:
    """Check the size and cut the HR region of one task from its source image."""
    h, w = image.height, image.width
    s, crop = task["scale"], task["crop"]
    if min(h, w) < s * MIN_SIZE_FACTOR:
        raise InputError(f"{task['source']}: image is {w}x{h}, smaller than scale x {MIN_SIZE_FACTOR} = {s * MIN_SIZE_FACTOR} pixels")
    if crop is None:
        return image.rgb[: h - h % s, : w - w % s], [0, 0, w - w % s, h - h % s], [0, 0]
    x, y = sample_crop(task["seed"], task["id"], w, h, crop)
    return crop_region(image.rgb, x, y, crop)


def process_pair(task: dict) -> dict:
    """Degrade one pair and write its PNGs; returns its manifest record, or
    ``{"error": message, "source": path}`` for an unusable input."""
    try:
        image = io.read_image(task["source"])
        hr, crop, pad = _select(task, image)
    except InputError as e:
        return {"error": str(e), "source": task["source"]}
    params = sample_params(task["seed"], task["id"], task["config"])
    target, lr = degrade_image(hr, params, task["scale"])
    out, name = Path(task["out"]), io.safe_name(task["id"]) + ".png"
    io.write_image(out / "hr" / name, target, bit_depth=image.bit_depth)
    io.write_image(out / "lr" / name, lr, bit_depth=8)
    record = {
        "format": io.PAIR_FORMAT, "id": task["id"], "index": task["index"],
        "hr": f"hr/{name}", "lr": f"lr/{name}", "scale": task["scale"],
        "source": task["source_rel"], "source_sha256": io.sha256_file(task["source"]),
        "crop": crop, "crop_size": task["crop"], "padded": bool(pad[0] or pad[1]), "padding": pad,
        "seed": task["seed"], "preset": task["config"].get("name"), "degradation": params,
    }
    if image.alpha is not None:
        record["alpha_dropped"] = True
    return record


def _init_worker(parent: int | None = None) -> None:
    """Set up a pool worker: one OpenCV thread; Ctrl-C left to the parent (which stops the
    pool); and, on Linux, a SIGTERM when the parent dies (kill -9 included), so that no
    worker outlives a killed ``degrade`` or prints a BrokenPipe traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def manifest_name(shard: tuple[int, int]) -> str:
    """``manifest.jsonl``, or shard K/N's part ``manifest.shard-K-of-N.jsonl`` (:mod:`refsr.shards`)."""
    return part_path("manifest.jsonl", shard).name


def _check_options(scale: int, crop: int | None, crops_per_image: int) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    if crop is not None and (crop % scale or crop < scale * MIN_SIZE_FACTOR):
        raise ValueError(f"crop {crop} must be a multiple of the scale {scale} and at least {scale * MIN_SIZE_FACTOR}")
    if crops_per_image < 1:
        raise ValueError(f"crops_per_image must be at least 1, got {crops_per_image}")


def _previous_records(out: Path, name: str, overwrite: bool) -> dict[str, dict]:
    """Records of an earlier run into ``out`` (final manifest part, then its checkpoint)."""
    if overwrite:
        return {}
    found: dict[str, dict] = {}
    for path in (out / f".{name}.progress", out / name):
        if path.is_file():
            found.update({r["id"]: r for r in io.read_jsonl(path)})
    return found


def _is_complete(record: dict | None, task: dict, out: Path) -> bool:
    """A pair is done when its record and both images exist; a record made with other
    settings (seed, scale, crop, preset or parameters) is an error, not a resume."""
    if record is None or not ((out / record["hr"]).is_file() and (out / record["lr"]).is_file()):
        return False
    same = (
        record.get("seed") == task["seed"] and record.get("scale") == task["scale"] and record.get("crop_size") == task["crop"]
        and record.get("degradation") == sample_params(task["seed"], task["id"], task["config"])
    )
    if not same:
        raise InputError(f"{out}: pair {task['id']!r} was made with other settings (seed, scale, crop or degradation); "
                         "use --overwrite or another output folder")
    return True


def _run(tasks: list[dict], workers: int):
    """Yield the result of each task, in order, with ``workers`` processes (0/1: in-process).

    The pool is a ``ProcessPoolExecutor``, not a ``multiprocessing.Pool``: a worker that dies
    (the OOM killer, ``kill -9``) breaks the run with an error instead of leaving the pair it
    held pending for ever. Closing the generator (the caller does, at once, on any error)
    cancels the pending pairs and waits for the running ones: each is written atomically.

    Raises:
        WorkerError: a worker process died; the pairs finished so far are kept (rerun to resume).
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(process_pair, tasks)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    try:
        yield from pool.map(process_pair, tasks)
    except BrokenProcessPool:
        raise WorkerError("a degrade worker process died (killed, or out of memory?); the pairs finished "
                          "so far are kept: rerun the same command to resume, with fewer --workers if "
                          "memory ran out") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _source_rel(out: Path, source: Path) -> str:
    return source.as_posix() if source.is_absolute() else io.relative_path(out / "manifest.jsonl", source)


def plan_tasks(inputs, out: Path, scale: int, crop: int | None, crops_per_image: int, config: dict, seed: int,
               recursive: bool, shard: tuple[int, int]) -> list[dict]:
    """The tasks of this shard: every pair of the whole input list, then every N-th one."""
    sources = io.list_images(inputs, recursive=recursive)
    plan = pair_ids(sources, crops_per_image)
    tasks = [
        {"id": pid, "index": i, "source": str(src), "source_rel": _source_rel(out, src), "crop_index": k,
         "scale": scale, "crop": crop, "seed": seed, "config": config, "out": str(out)}
        for i, (pid, src, k) in enumerate(plan)
    ]
    return io.select_shard(tasks, shard)


def degrade_folder(
    inputs, out, scale: int = 4, crop: int | None = 512, crops_per_image: int = 1, preset: str = "realesrgan",
    config: dict | str | Path | None = None, usm: bool | None = None, seed: int = 0, workers: int | None = None,
    overwrite: bool = False, skip_bad: bool = False, shard=None, recursive: bool = False,
) -> DegradeResult:
    """Make HR/LR pairs from image files and folders, with a manifest describing each pair.

    Args:
        inputs: image files and/or folders. out: the output folder.
        scale: SR factor in {1, 2, 3, 4, 8}. crop: HR crop side (a multiple of ``scale``), or
            None for the whole image cut to a multiple of ``scale``.
        preset, config, usm: see :func:`refsr.degrade.params.resolve_config`.
        seed: pairs are a pure function of (seed, pair id): same bytes for any ``workers``.
        shard: ``(K, N)`` or ``"K/N"``: process every N-th pair starting at K.

    Raises:
        ValueError: a bad option value. InputError: an unusable input (unless ``skip_bad``).
    """
    _check_options(scale, crop, crops_per_image)
    shard = io.parse_shard(shard) if not isinstance(shard, tuple) else shard
    out = Path(out)
    cfg = resolve_config(preset, config, usm)
    tasks = plan_tasks(inputs, out, scale, crop, crops_per_image, cfg, seed, recursive, shard)
    name = manifest_name(shard)
    previous = _previous_records(out, name, overwrite)
    records = {t["id"]: previous[t["id"]] for t in tasks if _is_complete(previous.get(t["id"]), t, out)}
    result = DegradeResult(manifest=out / name, skipped=len(records))
    pending = [t for t in tasks if t["id"] not in records]
    if workers is None:
        from ..device import available_cpus

        workers = available_cpus()
    bar = progress(total=len(tasks), initial=len(records), desc="degrade", unit="pair")
    last = time.monotonic()
    try:
        with contextlib.closing(_run(pending, workers)) as results:
            for rec in results:
                bar.update(1)
                if "error" in rec:
                    if not skip_bad:
                        raise InputError(rec["error"])
                    if rec["source"] not in {b[0] for b in result.bad}:
                        result.bad.append((rec["source"], rec["error"]))
                    continue
                records[rec["id"]] = rec
                result.written += 1
                if time.monotonic() - last > CHECKPOINT_SECONDS:
                    io.write_jsonl(out / f".{name}.progress", sorted(records.values(), key=lambda r: r["index"]))
                    last = time.monotonic()
    finally:
        bar.close()
        if result.written and len(records) < len(tasks):
            io.write_jsonl(out / f".{name}.progress", sorted(records.values(), key=lambda r: r["index"]))
    return _finish(out, name, shard, records, result)


def _finish(out: Path, name: str, shard, records: dict, result: DegradeResult) -> DegradeResult:
    if not records:
        raise InputError(f"no pairs written to {out}: every input was unusable")
    io.write_jsonl(out / name, sorted(records.values(), key=lambda r: r["index"]))
    (out / f".{name}.progress").unlink(missing_ok=True)
    result.merged = finish_shard(out / "manifest.jsonl", shard, merge_shards)
    return result


def merge_shards(out, n: int | None = None) -> Path:
    """Merge ``manifest.shard-K-of-N.jsonl`` (all K) into ``manifest.jsonl``, in the order of
    an unsharded run (:func:`refsr.shards.merge_jsonl`). ``out`` is the output folder or its
    ``manifest.jsonl``; ``n`` defaults to the N of the parts found.

    Raises:
        InputError: no parts, parts of different N, or a missing part (named).
    """
    out = Path(out)
    return merge_jsonl(out if out.suffix == ".jsonl" else out / "manifest.jsonl", n, key=lambda r: r["index"])
