"""The ``sample`` stage: LR files in, restored PNG files and ``run.json`` out.

For each input ``x.png`` it writes ``OUT/x<suffix>.png`` in the input's form (bit depth,
gray, alpha upsampled) and appends its record to a hidden run log (this run's part) as soon as
it is written; the last shard to finish merges the logs into ``OUT/run.json`` (a killed run's
log is merged once its shard is redone, or by ``refsr sample --merge``; :mod:`refsr.shards`).
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
from ..io import (Image, image_to_tensor, list_images, parse_shard, read_image, read_json, read_pair_manifest,
                  safe_name, select_shard, write_json, write_like)
from ..progress import progress
from .core import ReferenceInputCache, SampleSettings, encode_references, resolve_settings, restore_tensor
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
    fragments_encoded: int = 0  # reference fragments VQ-encoded by this run
    fragments_reused: int = 0  # fragments an earlier input of the run had (encoded once)


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


def _refs_tensor(frags: list[Fragment], device, size: int | None = None):
    """Fragments -> (1, R, 3, S, S) float32 in [-1, 1], or None for no fragments; a fragment
    without pixels (already encoded) is zeros of ``size``."""
    import torch

    if not frags:
        return None
    blank = lambda: torch.zeros(3, size, size, device=device)  # noqa: E731
    return torch.stack([image_to_tensor(f.pixels, (-1, 1), device) if f.pixels is not None else blank()
                        for f in frags])[None]


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


# Peak memory of one restoration per output pixel, measured on the CPU (`small` model,
# 96 and 384 px inputs at x4, /usr/bin/time max RSS, 2026-11-28): full-size float32 canvases
# (upsampled input, blended decoder output, the colour fix's working copies, the result on the
# host). The host part (result, clipped copy, encoded image) stays on the CPU with CUDA too.
# ``luma`` is ``wavelet`` and two more float32 canvases (the chroma difference and its projection),
# rounded up (at 384 px its peak was within the run-to-run spread of wavelet's, 1.5-1.7 GB).
BYTES_PER_OUTPUT_PIXEL = {"none": 100, "adain": 150, "wavelet": 210, "luma": 250}
HOST_BYTES_PER_OUTPUT_PIXEL = 48


def available_memory(device) -> int | None:
    """Free bytes where the canvases live: CUDA's free memory, or the host's MemAvailable
    (Linux); None where it cannot be read (no check then)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_memory(path, lr_size: tuple[int, int], scale: int, outscale: float | None, settings: SampleSettings,
                device, available=None) -> int:
    """Refuse, before any sampling, an image whose full-size canvases cannot fit; return the
    estimated bytes (:data:`BYTES_PER_OUTPUT_PIXEL`; the model's per-tile memory is bounded by
    ``--tile``/``--batch-size`` and not counted).

    Raises:
        InputError: naming the input, the sizes, the estimate, what is free and what to change.
    """
    available = available or available_memory
    h, w = lr_size
    px = h * scale * w * scale
    extra = round(h * outscale) * round(w * outscale) * 24 if outscale else 0
    need = px * BYTES_PER_OUTPUT_PIXEL[settings.color_fix] + extra
    cuda = getattr(device, "type", str(device)) == "cuda"
    parts = [("host", px * HOST_BYTES_PER_OUTPUT_PIXEL + extra), (str(device), need - px * HOST_BYTES_PER_OUTPUT_PIXEL - extra)] \
        if cuda else [("host", need)]
    for where, nbytes in parts:
        free = available(device) if where != "host" else available("cpu")
        if free is not None and nbytes > free:
            hint = " or --color-fix none" if settings.color_fix != "none" else ""
            raise InputError(f"{path}: restoring {w}x{h} at x{scale} ({w * scale}x{h * scale} px) needs about "
                             f"{nbytes / 2**30:.1f} GiB of {where} memory and {free / 2**30:.1f} GiB are free; "
                             f"restore it in pieces (crop the input){hint}")
    return need


# ---------------------------------------------------------------------------------------
# run.json
# ---------------------------------------------------------------------------------------


IGNORED_SETTINGS = ("device",)  # may differ between shards and reruns (same bytes per device)
DERIVED_SETTINGS = ("timesteps",)  # follow from sampler, steps and start_strength: named through them


# Settings that run.json files written before they existed do not record, with the value
# those runs used: such a folder's outputs were made with it.
LATER_SETTINGS = {"draws": 1, "mirror": False, "color_fix_levels": 5}


def _changed(old: dict, new: dict) -> list[str]:
    """Settings that differ between two runs (keys both record, or :data:`LATER_SETTINGS` that
    ``old`` predates; except ``device`` and the derived ``timesteps``)."""
    skip = IGNORED_SETTINGS + DERIVED_SETTINGS
    old = {**LATER_SETTINGS, **old}
    return sorted(k for k in new if k in old and k not in skip and old[k] != new[k])


class RunLog:
    """This run's finished images, appended (and fsynced) one line at a time to a hidden
    ``OUT/.run-*.jsonl`` (this run's part, :mod:`refsr.shards`) as they are written, so that an
    interruption (Ctrl-C, kill -9, full disk) loses no record. The first line holds the run's
    settings, its shard and start time; :meth:`end` adds an end line. No lock: a log with an
    end line, or superseded by a later finished run of the same shard, is finished, and only
    finished logs are merged (:func:`merge_run_logs`)."""

    def __init__(self, out_dir: Path, settings: dict, shard: tuple[int, int] = (0, 1)):
        import os
        import tempfile

        from ..io import file_mode

        out_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".run-", suffix=".jsonl", dir=out_dir)
        os.fchmod(fd, file_mode())
        self.path, self._file, self._lines = Path(name), os.fdopen(fd, "w", encoding="utf-8"), []
        self._append({"format": RUN_FORMAT, "settings": settings, "shard": list(shard), "started": time.time_ns()})

    def _append(self, obj: dict) -> None:
        import json
        import os

        self._lines.append(obj)
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def add(self, name: str, record: dict) -> None:
        self._append({"image": name, "record": record})

    def end(self) -> None:
        """Mark the run finished (also after an error: it writes no more). If another process
        took the log away meanwhile (``refsr sample --merge`` while this run went on), it is
        written again whole, so no record is lost."""
        from ..io import write_jsonl

        with contextlib.suppress(OSError):
            self._append({"end": True})
        self._file.close()
        if not self.path.exists():
            write_jsonl(self.path, self._lines)


@dataclass
class _Log:
    """A run log as read: its header (settings, shard, start), images and whether it ended."""

    path: Path
    settings: dict | None
    images: dict[str, dict]
    shard: tuple[int, int] | None
    started: int
    ended: bool


def _read_log(path: Path) -> _Log:
    """A run log; a torn last line is ignored (logs of older refsr have no shard, start or end).

    Raises:
        FileNotFoundError: the log was merged and removed meanwhile.
    """
    import json

    log = _Log(path, None, {}, None, 0, False)
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get("settings"), dict) and log.settings is None:
            log.settings, log.started = obj["settings"], int(obj.get("started") or 0)
            log.shard = tuple(obj["shard"]) if isinstance(obj.get("shard"), list) else None
        elif log.settings is not None and isinstance(obj.get("record"), dict):
            log.images[str(obj.get("image"))] = obj["record"]
        elif obj.get("end") is True:
            log.ended = True
    return log


def _finished(logs: list[_Log]) -> list[_Log]:
    """The logs whose runs are over: ended, or superseded by a later-started ended run of the
    same shard or of the whole input (the run was killed and redone)."""
    ended = [g for g in logs if g.ended]
    return [g for g in logs if g.ended or any(e.started > g.started and (e.shard == g.shard or e.shard == (0, 1))
                                              for e in ended)]


def shards_done(out_dir: Path, n: int) -> bool:
    """True when, for every K, the latest run log of shard K/N in ``out_dir`` has ended (or
    was merged already): the moment the last shard of a run merges (:mod:`refsr.shards`)."""
    latest: dict[int, _Log] = {}
    for path in out_dir.glob(".run-*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            g = _read_log(path)
            if g.shard is not None and g.shard[1] == n and (g.shard[0] not in latest or
                                                             g.started > latest[g.shard[0]].started):
                latest[g.shard[0]] = g
    return all(g.ended for g in latest.values())


def _merge_into(run: dict, settings: dict, images: dict[str, dict]) -> dict:
    """``run`` (the content of run.json) with ``images`` made with ``settings`` merged in:
    the top-level settings become ``settings``; earlier records made with other settings
    keep theirs in their own ``settings`` key. Merging the same log twice changes nothing."""
    previous = {k: v for k, v in run.items() if k not in ("images", "format")}
    merged = dict(run.get("images", {}))
    if previous and _changed(previous, settings):
        merged = {name: rec if "settings" in rec else {**rec, "settings": previous} for name, rec in merged.items()}
    merged.update(images)
    return {"format": RUN_FORMAT, **settings, "images": dict(sorted(merged.items()))}


def merge_run_logs(out_dir: Path, everything: bool = False) -> Path:
    """Fold the run logs of ``out_dir`` whose runs are over (every log with ``everything``:
    ``refsr sample --merge``, when no run is writing into ``out_dir``) into ``OUT/run.json``,
    in the order the runs started, written atomically, then remove those logs.

    No lock (the shard protocol, :mod:`refsr.shards`): the logs are read before run.json and
    folding a log twice changes nothing, so two shards merging at once write the same content.
    """
    path = out_dir / "run.json"
    for _ in range(100):
        try:
            logs = [_read_log(q) for q in out_dir.glob(".run-*.jsonl")]
        except FileNotFoundError:  # another shard merged meanwhile: read again
            continue
        done = sorted(logs if everything else _finished(logs), key=lambda g: (g.started, g.path.name))
        run = read_json(path) if path.is_file() else {}
        for g in done:
            if g.settings is not None and g.images:  # a run that wrote nothing claims nothing
                run = _merge_into(run, g.settings, g.images)
        if any(g.settings is not None and g.images for g in done):
            write_json(path, run)
        for g in done:
            g.path.unlink(missing_ok=True)
        return path
    raise InputError(f"{out_dir}: run logs kept changing while merging them; run `refsr sample --merge -o {out_dir}`")


def _finish_run(out_dir: Path, shard: tuple[int, int]) -> Path:
    """The end of a run: if it was the last shard of its N to finish, merge the logs."""
    if shards_done(out_dir, shard[1]):
        merge_run_logs(out_dir)
    return out_dir / "run.json"


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
    for q in out_dir.glob(".run-*.jsonl"):
        with contextlib.suppress(FileNotFoundError):  # merged meanwhile: its settings are in run.json
            logged = _read_log(q).settings
            if logged is not None:
                earlier.append(logged)
    for old in earlier:
        old = {**LATER_SETTINGS, **{k: v for k, v in old.items() if k not in ("images", "format")}}
        changed = _changed(old, settings)
        if changed:
            what = ", ".join(f"{k} {old[k]!r} -> {settings[k]!r}" for k in changed[:4])
            raise InputError(f"{out_dir}: holds outputs made with other settings ({what}); pass --overwrite to "
                             "redo them with these settings, or use another output folder")


def _run_settings(model_name: str, model, settings: SampleSettings, seed: int, device, extra: dict) -> dict:
    from .samplers import sampling_timesteps

    s = asdict(settings)
    s.pop("cache_context", None)
    if s["color_fix_levels"] is None:  # a colour fix without levels
        s.pop("color_fix_levels")
    s["timesteps"] = sampling_timesteps(settings.sampler, model.scheduler_config, settings.steps, settings.start_strength)
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
        self._shared = None
        self.cache = ReferenceInputCache()
        if not self.use and (refs or matches):
            warnings.append("model kind 'ldm' has no reference branch: the references are ignored")
        if self.use and not (refs or matches):
            warnings.append("model kind 'ldm-ca' given no references (--refs/--matches): the branch adds nothing")

    def context(self, model, frags: list[Fragment], settings: SampleSettings, device):
        """The encoded ``frags`` of one input (None for none). A fragment (file and box) that an
        earlier input of the run had is not VQ-encoded again (:class:`ReferenceInputCache`),
        and ``--refs`` without ``--matches`` are encoded once for the run; either way the
        values are those of encoding the input's fragments alone."""
        if not self.use or not frags:
            return None
        if self.table is None:
            if self._shared is None:
                self._shared = self._encode(model, frags, settings, device)
            return self._shared
        return self._encode(model, frags, settings, device)

    @staticmethod
    def _key(path, box) -> tuple:
        return str(Path(path).resolve()), tuple(int(v) for v in box)

    def _encode(self, model, frags, settings, device):
        keys = [[self._key(f.path, f.box) for f in frags]]
        # a fragment left uncut (its encoding was kept, see for_item) is served by the cache
        assert all(f.pixels is not None or k in self.cache for f, k in zip(frags, keys[0]))
        return encode_references(model, _refs_tensor(frags, device, model.ref_size), settings=settings, keys=keys,
                                 cache=self.cache)

    def for_item(self, item: InputItem) -> list[Fragment]:
        if not self.use:
            return []
        if self.table is None:
            return self.global_refs
        record = self.table.lookup(item.path, item.pair_id)
        if record is None:
            self.unmatched.append(str(item.path))
        return self.global_refs + load_match_refs(record, self.size, self.max_refs,
                                                  encoded=lambda path, box: self._key(path, box) in self.cache)


def _restore_one(model, item: InputItem, image: Image, settings, seed, device, outscale, ref_context=None):
    """Restore one decoded image with its encoded fragments ``ref_context`` (None: none);
    returns (H', W', 3) float32 in [0, 1]."""
    import torch

    from ..seeding import torch_generator_for

    generator = torch_generator_for(seed, item.path.stem)
    lr = image_to_tensor(image.rgb, (-1, 1), device, batch=True)
    try:
        out = restore_tensor(model, lr, settings=settings, generator=generator, ref_context=ref_context)
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
    from ..device import cpu_bf16_supported, resolve_device
    from .loading import load_model

    settings = settings or SampleSettings()
    settings.check()
    start, out_dir, summary = time.perf_counter(), Path(out_dir), SampleSummary()
    device = resolve_device(device) if isinstance(device, str) else device
    shard = parse_shard(shard) if not isinstance(shard, tuple) else shard
    items = select_shard(collect_inputs(inputs), shard)
    outs = output_paths(items, out_dir, suffix)
    if isinstance(model, (str, Path)) or model is None:
        model, model_path = load_model(model, device)
        model_name = str(model_path)
    else:
        model, model_name = model.to(device).eval(), getattr(model, "name_or_path", type(model).__name__)
    settings = resolve_settings(model, settings)  # run.json records the start strength used
    if settings.precision == "bf16" and device.type == "cpu" and cpu_bf16_supported() is False:
        summary.warnings.append("bf16 on this CPU is emulated (it has no bf16 instructions): several times slower "
                                "than fp32, and less precise; use --precision fp32")
    chooser = _References(model, refs, matches, max_refs, summary.warnings)
    extra = {"outscale": outscale, "suffix": suffix, "refs": [str(r) for r in refs],
             "matches": str(matches) if matches else None}
    run_settings = _run_settings(model_name, model, settings, seed, device, extra)
    check_run_settings(out_dir, run_settings, overwrite)
    run_log = RunLog(out_dir, run_settings, shard)
    try:
        for item, out_path in progress(list(zip(items, outs)), desc="images", unit="img"):
            if out_path.exists() and not overwrite:
                summary.skipped.append(out_path)
                continue
            t0 = time.perf_counter()
            image = read_image(item.path)
            check_output_size(item.path, (image.height, image.width), model.scale, outscale)
            plan_memory(item.path, (image.height, image.width), model.scale, outscale, settings, device)
            frags = chooser.for_item(item)
            rgb = _restore_one(model, item, image, settings, seed, device, outscale,
                               chooser.context(model, frags, settings, device))
            write_like(out_path, rgb, image)
            summary.written.append(out_path)
            run_log.add(out_path.name, {
                "input": _relative(item.path, out_dir), "pair_id": item.pair_id,
                "size": [image.width, image.height], "output_size": [rgb.shape[1], rgb.shape[0]],
                "refs": [dict(f.record(), path=_relative(f.path, out_dir)) for f in frags],
                "seconds": round(time.perf_counter() - t0, 3),
            })
    except BaseException:
        with contextlib.suppress(Exception):  # e.g. a full disk: the log stays for the next run to merge
            run_log.end()
            _finish_run(out_dir, shard)
        raise
    run_log.end()
    summary.run_json = _finish_run(out_dir, shard)
    if chooser.unmatched:
        summary.warnings.append(f"{len(chooser.unmatched)} input(s) have no record in {matches} and ran without "
                                f"references: {', '.join(chooser.unmatched[:5])}")
    summary.fragments_encoded, summary.fragments_reused = chooser.cache.misses, chooser.cache.hits
    summary.seconds = time.perf_counter() - start
    return summary
