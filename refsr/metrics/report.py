"""Pairing predictions with ground truth, running the metrics, report files, comparisons.

``report.json`` (format ``refsr.report/1``)::

    {"format": "refsr.report/1", "created": "...", "pred": "...", "gt": "...",
     "images": 24,
     "metrics": {"psnr": {"status": "ok", "mean": 27.31, "count": 24, "infinite": 0,
                          "better": "higher", "unit": "dB", "mean_of": "..."},
                 "lpips": {"status": "unavailable", "reason": "LPIPS (alex trunk) weights ..."},
                 "psnr" ... "fid": {"status": "ok", "value": 31.2, "count": 24, "warning": "..."}},
     "settings": {"crop_border": 4, "color": "y", "suffix": "_sr", ...},
     "versions": {"refsr": ..., "torch": ..., "lpips": ..., "piq": ...}}

``per_image.csv``: one row per pair: ``name, pred, gt`` and one column per per-image
metric (``inf`` for the PSNR of identical images).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import InputError, MissingWeightsError
from ..io import atomic_open, image_to_tensor, list_images, read_image, read_json, read_pair_manifest, write_json
from ..progress import progress
from . import fidelity, niqe, perceptual

log = logging.getLogger("refsr.metrics")

REPORT_FORMAT = "refsr.report/1"
METRICS = ("psnr", "ssim", "lpips", "clipiqa", "niqe", "fid")
NO_REFERENCE = ("clipiqa", "niqe")
PER_IMAGE = ("psnr", "ssim", "lpips", "clipiqa", "niqe")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clipiqa": True, "niqe": False, "fid": False}
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "clipiqa": "CLIP-IQA", "niqe": "NIQE", "fid": "FID"}


@dataclass
class Pair:
    """One prediction and its ground truth (``gt`` is None for no-reference runs)."""

    name: str
    pred: Path
    gt: Path | None = None
    border: int = 0


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the report (JSON-ready) and the per-image rows."""

    report: dict
    rows: list[dict] = field(default_factory=list)

    @property
    def unavailable(self) -> dict[str, str]:
        """Metric name -> reason, for every metric whose weights were missing."""
        return {k: v["reason"] for k, v in self.report["metrics"].items() if v["status"] == "unavailable"}


# ---------------------------------------------------------------------------------------
# Pairing
# ---------------------------------------------------------------------------------------


def strip_suffix(stem: str, suffix: str) -> str:
    """The pairing key of a prediction: its stem without ``suffix`` (kept if absent)."""
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) and len(stem) > len(suffix) else stem


def _keyed(paths: list[Path], key, what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        k = key(p)
        if k in out:
            raise InputError(f"two {what} files pair as {k!r}: {out[k]} and {p}")
        out[k] = p
    return out


def _gt_from_manifest(manifest: Path) -> tuple[dict[str, tuple[Path, int]], dict[str, str]]:
    """Ground truth of a pair manifest: key -> (hr path, scale), plus alias -> key.

    A prediction may be named after the record's ``id``, its HR stem or its LR stem.
    """
    entries, aliases = {}, {}
    for rec in read_pair_manifest(manifest):
        key = rec["hr_path"].stem
        entries[key] = (rec["hr_path"], int(rec["scale"]))
        for alias in (rec["id"], key, rec["lr_path"].stem):
            aliases.setdefault(alias, key)
    return entries, aliases


def pair_images(pred, gt=None, suffix: str = "_sr", crop_border: int | None = None) -> tuple[list[Pair], dict]:
    """Pair prediction images with ground-truth images by file stem.

    Args:
        pred (`str` or `Path`): folder (or file) of predictions.
        gt (`str`, `Path` or `None`): folder of ground truth, or a pair manifest
            (``.jsonl``, its ``hr`` images); ``None`` for no-reference metrics only.
        suffix (`str`, defaults to ``"_sr"``): removed from prediction stems when present.
        crop_border (`int` or `None`): border for PSNR/SSIM/NIQE; ``None`` means the
            manifest's scale, else 0.

    Returns:
        The pairs sorted by name, and a dict describing the crop border used.

    Raises:
        InputError: unpaired files (all of them listed) or two files with the same key.
    """
    preds = _keyed(list_images(pred), lambda p: strip_suffix(p.stem, suffix), "prediction")
    if gt is None:
        border = crop_border or 0
        return [Pair(k, p, None, border) for k, p in sorted(preds.items())], {
            "crop_border": border, "crop_border_source": "option" if crop_border is not None else "default (no ground truth)"}
    gt = Path(gt)
    if gt.suffix.lower() == ".jsonl":
        entries, aliases = _gt_from_manifest(gt)
    else:
        entries = {k: (p, None) for k, p in _keyed(list_images(gt), lambda p: p.stem, "ground-truth").items()}
        aliases = {k: k for k in entries}
    matched = {k: aliases[k] for k in preds if k in aliases}
    lonely_pred = [preds[k].name for k in preds if k not in matched]
    lonely_gt = [entries[k][0].name for k in entries if k not in set(matched.values())]
    if lonely_pred or lonely_gt:
        parts = ([f"predictions without ground truth: {', '.join(lonely_pred)}"] if lonely_pred else []) + (
            [f"ground truth without prediction: {', '.join(lonely_gt)}"] if lonely_gt else [])
        raise InputError(f"{len(lonely_pred) + len(lonely_gt)} unpaired file(s) (pairing by stem after removing suffix {suffix!r}); " + "; ".join(parts))
    pairs, scales = [], set()
    for k in sorted(preds):
        gt_path, scale = entries[matched[k]]
        scales.add(scale)
        border = crop_border if crop_border is not None else (scale or 0)
        pairs.append(Pair(k, preds[k], gt_path, border))
    if crop_border is not None:
        crop = {"crop_border": crop_border, "crop_border_source": "option"}
    elif scales == {None}:
        crop = {"crop_border": 0, "crop_border_source": "default (no scale known)"}
    else:
        crop = {"crop_border": scales.pop() if len(scales) == 1 else "per image (manifest scale)", "crop_border_source": "manifest scale"}
    return pairs, crop


# ---------------------------------------------------------------------------------------
# Running the metrics
# ---------------------------------------------------------------------------------------


def check_metrics(metrics, have_gt: bool) -> tuple[list[str], dict[str, dict]]:
    """Validate metric names; return the ones to run and the skipped ones with a reason.

    ``metrics=None`` means all: without ground truth, the full-reference ones are then
    skipped (and said so in the report); asking for one explicitly without ground truth
    is an error.

    Raises:
        ValueError: an unknown name, or a full-reference metric without ground truth.
    """
    explicit = metrics is not None
    metrics = list(dict.fromkeys(metrics)) if explicit else list(METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    needs_gt = [m for m in metrics if m not in NO_REFERENCE and not have_gt]
    if needs_gt and explicit:
        raise ValueError(f"{', '.join(needs_gt)} need ground truth (--gt); without it only {', '.join(NO_REFERENCE)} can run")
    skipped = {m: {"status": "skipped", "reason": "needs ground truth (--gt)"} for m in needs_gt}
    return [m for m in metrics if m not in needs_gt], skipped


def load_models(metrics, lpips_net: str, device, models: dict | None = None) -> tuple[dict, dict, dict]:
    """Load the networks the chosen metrics need.

    Returns:
        (name -> model, name -> unavailable reason, name -> weights description). Models in
        ``models`` are used as given (e.g. randomly initialised ones in tests).
    """
    loaders = {"lpips": lambda: perceptual.load_lpips(lpips_net, device),
               "clipiqa": lambda: perceptual.load_clipiqa(device),
               "fid": lambda: perceptual.load_fid_inception(device)}
    sources = {"lpips": f"lpips v0.1 linear layers + torchvision {lpips_net} ({Path(perceptual.LPIPS_BACKBONES[lpips_net]).name})",
               "clipiqa": "piq CLIP RN50 (~/.cache/clip/RN50.pt) with 'Good photo.'/'Bad photo.' anchors",
               "fid": f"pytorch-fid Inception ({Path(perceptual.FID_INCEPTION_URL).name}), pool3 2048-d"}
    loaded, unavailable, weights = {}, {}, {}
    for name in (m for m in metrics if m in loaders):
        if models and name in models:
            loaded[name], weights[name] = models[name].to(device), "supplied by the caller (not the published weights)"
            continue
        try:
            loaded[name], weights[name] = loaders[name](), sources[name]
        except MissingWeightsError as e:
            log.warning("%s unavailable: %s", LABELS[name], e)
            unavailable[name] = str(e)
    return loaded, unavailable, weights


def _load_pair(pair: Pair):
    """Pixels of one pair as (3, H, W) float32 tensors in [0, 1], and whether the
    prediction file is gray (one channel); checks the sizes match.

    Raises:
        InputError: the two images differ in size (both files and sizes named).
    """
    image = read_image(pair.pred)
    pred = image.rgb
    if pair.gt is None:
        return image_to_tensor(pred), None, image.gray
    gt = read_image(pair.gt).rgb
    if pred.shape != gt.shape:
        raise InputError(f"size mismatch for {pair.name!r}: prediction {pair.pred} is {pred.shape[1]}x{pred.shape[0]}, "
                         f"ground truth {pair.gt} is {gt.shape[1]}x{gt.shape[0]} (width x height)")
    return image_to_tensor(pred), image_to_tensor(gt), image.gray


def _groups(pairs: list[Pair], tensors: list) -> dict[tuple, list[int]]:
    """Indices of a batch grouped by (image shape, crop border, gray), so each group stacks."""
    groups: dict[tuple, list[int]] = {}
    for i, (pair, (pred, _, gray)) in enumerate(zip(pairs, tensors)):
        groups.setdefault((tuple(pred.shape), pair.border, gray), []).append(i)
    return groups


def _niqe_values(pred, border: int, gray: bool) -> list[float]:
    """NIQE of (B, 3, H, W) in [0, 1]: Y channel, or the one channel of gray files (as
    BasicSR); float64, so MPS images go through the CPU; on CPU a few images per call."""
    import torch

    dev = pred.device if pred.device.type != "mps" else torch.device("cpu")
    x = pred[:, :1] if gray else pred
    chunk = len(x) if dev.type == "cuda" else max(1, 2**18 // (x.shape[-1] * x.shape[-2]))
    return [v for i in range(0, len(x), chunk) for v in niqe.niqe(x[i:i + chunk].to(dev), border).tolist()]


def _run_group(metrics, loaded, pred, gt, border, color, fid_feats, gray=False) -> dict[str, list]:
    """Per-image values of one stacked group: (B, 3, H, W) tensors in [0, 1]."""
    import torch

    out: dict[str, list] = {}
    if "niqe" in metrics:
        out["niqe"] = _niqe_values(pred, border, gray)
    if "psnr" in metrics or "ssim" in metrics:
        dev = pred.device if pred.device.type != "mps" else torch.device("cpu")  # float64 is not on MPS
        # On CPU, small chunks stay in cache (measured: 1 image of 512x512 per call is fastest).
        chunk = len(pred) if dev.type == "cuda" else max(1, 2**18 // (pred.shape[-1] * pred.shape[-2]))
        parts = [fidelity.psnr_ssim(pred[i:i + chunk].to(dev), gt[i:i + chunk].to(dev), border=border, color=color)
                 for i in range(0, len(pred), chunk)]
        out["psnr"] = [v for p, _ in parts for v in p.tolist()]
        out["ssim"] = [v for _, s in parts for v in s.tolist()]
    if "lpips" in loaded:
        out["lpips"] = perceptual.lpips_distance(loaded["lpips"], pred, gt).tolist()
    if "clipiqa" in loaded:
        out["clipiqa"] = perceptual.clipiqa_score(loaded["clipiqa"], pred).tolist()
    if "fid" in loaded:
        fid_feats[0].append(perceptual.inception_features(loaded["fid"], pred))
        fid_feats[1].append(perceptual.inception_features(loaded["fid"], gt))
    return {k: v for k, v in out.items() if k in metrics}


def _summary(name: str, values: list[float]) -> dict:
    """Mean and count of a per-image metric; PSNR's infinite values are counted apart."""
    entry = {"status": "ok", "better": "higher" if HIGHER_IS_BETTER[name] else "lower"}
    finite = [v for v in values if math.isfinite(v)]
    entry.update(mean=sum(finite) / len(finite) if finite else None, count=len(values))
    if name == "psnr":
        entry.update(unit="dB", infinite=len(values) - len(finite),
                     mean_of="finite values only: identical pairs (infinite PSNR) are excluded from the mean and counted in 'infinite'")
    return entry


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header (Pillow), decoding it only when
    Pillow cannot parse it; EXIF rotation is ignored (NIQE's size rule is symmetric)."""
    try:
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except Exception:  # not a format Pillow reads: decode it
        return read_image(path).rgb.shape[:2]


def _niqe_refusal(message: str, explicit: bool) -> dict:
    """An image NIQE cannot score: an error when NIQE was asked for by name, otherwise the
    'not computed' entry of the report (the other metrics still run)."""
    if explicit:
        raise InputError(message)
    log.warning("NIQE not computed: %s", message)
    return {"status": "not computed", "reason": message}


def _niqe_size_check(pairs: list[Pair], explicit: bool) -> dict | None:
    """Check every prediction is large enough for NIQE before computing anything."""
    for pair in pairs:
        problem = niqe.size_problem(*_image_size(pair.pred), pair.border)
        if problem:
            return _niqe_refusal(f"{pair.pred}: {problem}", explicit)
    return None


def _niqe_nan_check(pairs: list[Pair], values: list, explicit: bool) -> dict | None:
    """NIQE is undefined (NaN) for an image with fewer than 2 textured blocks: never averaged."""
    bad = [p.pred for p, v in zip(pairs, values) if not math.isfinite(v)]
    if not bad:
        return None
    return _niqe_refusal(f"{bad[0]}: NIQE is undefined (fewer than {niqe.MIN_BLOCKS} of its {niqe.BLOCK}x{niqe.BLOCK} blocks "
                         f"have both positive and negative normalised coefficients: a flat image?)"
                         + (f"; {len(bad) - 1} more such image(s)" if len(bad) > 1 else ""), explicit)


def _fid_entry(feats) -> dict:
    import torch

    n = sum(f.shape[0] for f in feats[0])
    if n < 2:
        return {"status": "not computed", "reason": f"FID needs at least 2 images per set, got {n}"}
    entry = {"status": "ok", "value": perceptual.fid_from_features(torch.cat(feats[0]), torch.cat(feats[1])), "count": n, "better": "lower"}
    if n < perceptual.FID_MIN_IMAGES:
        entry["warning"] = f"only {n} images (< {perceptual.FID_MIN_IMAGES}): FID is strongly biased upwards at small n; compare only runs with the same n"
        log.warning("FID: %s", entry["warning"])
    return entry


def versions() -> dict[str, str]:
    """Versions of refsr and of the packages the metrics come from."""
    from importlib import metadata

    import refsr

    out = {"refsr": refsr.__version__}
    for pkg in ("torch", "torchvision", "lpips", "piq"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _settings(crop: dict, color: str, suffix: str, lpips_net: str, protocol, device, weights: dict) -> dict:
    return {**crop, "crop_applies_to": ["psnr", "ssim", "niqe"], "color": color,
            "y_conversion": "ITU-R BT.601, MATLAB rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in [0, 1]); not rounded",
            "quantization": "psnr/ssim on 8-bit-rounded values (0-255 scale, peak 255); lpips/clipiqa/fid on the decoded pixels",
            "ssim": "Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, valid windows only, mean over channels (BasicSR)",
            "niqe": "BasicSR calculate_niqe: 8-bit values, crop border, Y channel (BT.601, rounded; gray files as they are), "
                    "96x96 blocks, 2 scales (MATLAB bicubic imresize 1/2), pristine MVG of the authors' release; float64 rounded "
                    "to float32 where BasicSR is float32",
            "lpips_net": lpips_net, "lpips": f"lpips v0.1, net {lpips_net}, RGB in [-1, 1]", "fid": "Inception pool3 features over the whole set, inputs resized to 299x299",
            "suffix": suffix, "reference_protocol": protocol, "device": str(device), "weights": weights}


def request_of(pred, gt=None, metrics=None, crop_border=None, color="y", suffix="_sr", lpips_net="alex") -> dict:
    """What was asked for, as stored in ``report["request"]``: a rerun with the same request
    can reuse the report, a different one must not."""
    return {"pred": str(pred), "gt": None if gt is None else str(gt), "metrics": None if metrics is None else list(metrics),
            "crop_border": crop_border, "color": color, "suffix": suffix, "lpips_net": lpips_net}


def evaluate(pred, gt=None, metrics=None, crop_border: int | None = None, color: str = "y", suffix: str = "_sr",
             batch_size: int = 8, lpips_net: str = "alex", device="auto", protocol: str | None = None,
             models: dict | None = None) -> Evaluation:
    """Compute the metrics of a folder of predictions against its ground truth.

    Args:
        pred, gt, suffix, crop_border: see :func:`pair_images`.
        metrics (`list[str]` or `None`): subset of :data:`METRICS`; ``None`` runs all that apply
            (NIQE is then 'not computed' if an image is too small or flat for it; asked for
            by name, that is an error).
        color (`str`, defaults to ``"y"``): PSNR/SSIM on BT.601 ``"y"`` or on ``"rgb"``.
        batch_size (`int`, defaults to 8): images per batch.
        lpips_net (`str`, defaults to ``"alex"``): ``"alex"`` or ``"vgg"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... or a ``torch.device``.
        protocol (`str` or `None`): free text recorded in the report (e.g. reference protocol).
        models (`dict` or `None`): prebuilt ``lpips``/``clipiqa``/``fid`` networks to use.

    Returns:
        :class:`Evaluation`; a metric whose weights are missing is ``unavailable`` in it.

    Raises:
        InputError: unpaired files, a size mismatch, or, with ``niqe`` asked for by name, an
            image too small for NIQE (file and minimum size named) or flat (NIQE undefined).
    """
    import torch

    from ..device import resolve_device

    if color not in fidelity.COLORS:
        raise ValueError(f"color must be one of {', '.join(fidelity.COLORS)}; got {color!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if lpips_net not in perceptual.LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(perceptual.LPIPS_NETS)}; got {lpips_net!r}")
    run, entries = check_metrics(metrics, gt is not None)
    pairs, crop = pair_images(pred, gt, suffix, crop_border)
    if "niqe" in run and (refused := _niqe_size_check(pairs, metrics is not None)):
        run.remove("niqe")
        entries["niqe"] = refused
    device = device if isinstance(device, torch.device) else resolve_device(device)
    loaded, unavailable, weights = load_models(run, lpips_net, device, models)
    values: dict[str, list] = {m: [None] * len(pairs) for m in PER_IMAGE if m in run and m not in unavailable}
    fid_feats: tuple[list, list] = ([], [])
    for start in progress(range(0, len(pairs), batch_size), desc="evaluate", unit="batch"):
        batch = pairs[start:start + batch_size]
        tensors = [_load_pair(p) for p in batch]
        for (_, border, gray), idx in _groups(batch, tensors).items():
            pred_t = torch.stack([tensors[i][0] for i in idx]).to(device)
            gt_t = torch.stack([tensors[i][1] for i in idx]).to(device) if gt is not None else None
            for name, vals in _run_group(run, loaded, pred_t, gt_t, border, color, fid_feats, gray).items():
                for i, v in zip(idx, vals):
                    values[name][start + i] = v
    if "niqe" in values and (refused := _niqe_nan_check(pairs, values["niqe"], metrics is not None)):
        run.remove("niqe")
        entries["niqe"] = refused
        del values["niqe"]
    for name in run:
        entries[name] = ({"status": "unavailable", "reason": unavailable[name]} if name in unavailable
                         else _fid_entry(fid_feats) if name == "fid" else _summary(name, values[name]))
    report = {"format": REPORT_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "pred": str(pred), "gt": None if gt is None else str(gt), "images": len(pairs),
              "request": request_of(pred, gt, metrics, crop_border, color, suffix, lpips_net),
              "metrics": {m: entries[m] for m in METRICS if m in entries},
              "settings": _settings(crop, color, suffix, lpips_net, protocol, device, weights), "versions": versions()}
    if "niqe" in run:
        report["settings"]["niqe_params"] = niqe.params_record()
    rows = [{"name": p.name, "pred": str(p.pred), "gt": "" if p.gt is None else str(p.gt),
             **{m: values[m][i] for m in values}} for i, p in enumerate(pairs)]
    return Evaluation(report, rows)


# ---------------------------------------------------------------------------------------
# Files and tables
# ---------------------------------------------------------------------------------------


def write_report(path, evaluation: Evaluation) -> Path:
    """Write ``report.json`` atomically."""
    write_json(path, evaluation.report)
    return Path(path)


def _csv_value(v) -> str:
    if v is None:
        return ""
    return repr(float(v)) if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def write_per_image_csv(path, evaluation: Evaluation) -> Path:
    """Write ``per_image.csv`` atomically: name, pred, gt and one column per per-image metric."""
    rows = evaluation.rows
    columns = ["name", "pred", "gt"] + [m for m in PER_IMAGE if rows and m in rows[0]]
    with atomic_open(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row[c] if c in ("name", "pred", "gt") else _csv_value(row[c]) for c in columns])
    return Path(path)


def read_report(path) -> dict:
    """Read a ``report.json``, checking its format.

    Raises:
        InputError: not a refsr report (the file and the format found are named).
    """
    report = read_json(path)
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        found = report.get("format") if isinstance(report, dict) else type(report).__name__
        raise InputError(f"{path}: not a refsr report (format {found!r}, expected {REPORT_FORMAT!r})")
    return report


def metric_label(name: str, report: dict) -> str:
    """Row label with its convention and direction, e.g. ``PSNR (Y) ↑``."""
    settings = report.get("settings", {})
    detail = {"psnr": f" ({str(settings.get('color', 'y')).upper()}, dB)", "ssim": f" ({str(settings.get('color', 'y')).upper()})",
              "lpips": f" ({settings.get('lpips_net', 'alex')})", "niqe": " (Y)"}.get(name, "")
    return f"{LABELS[name]}{detail} {'↑' if HIGHER_IS_BETTER[name] else '↓'}"


def metric_value(entry: dict) -> float | None:
    """The number a metric entry stands for (``value`` for FID, ``mean`` otherwise)."""
    if entry.get("status") != "ok":
        return None
    value = entry.get("value", entry.get("mean"))
    if value is None and entry.get("infinite"):
        return math.inf  # every pair identical: PSNR is infinite
    return value


def _fmt(v: float | None, name: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}" if name in ("psnr", "fid") else f"{v:.4f}"


def format_table(report: dict) -> str:
    """The console table of one report: metric, value, count and notes."""
    lines = [f"{'metric':<20} {'value':>10} {'n':>6}  note", "-" * 60]
    for name, entry in report["metrics"].items():
        if entry["status"] == "ok":
            note = entry.get("warning", "")
            if entry.get("infinite"):
                note = f"{entry['infinite']} identical pair(s) with infinite PSNR, excluded from the mean"
            lines.append(f"{metric_label(name, report):<20} {_fmt(metric_value(entry), name):>10} {entry['count']:>6}  {note}".rstrip())
        else:
            reason = entry["reason"].split("; ")[0]  # the full reason, with how to fix it, is in report.json
            lines.append(f"{metric_label(name, report):<20} {entry['status']:>10} {'':>6}  {reason}")
    s = report["settings"]
    lines.append(f"crop border {s.get('crop_border')} ({s.get('crop_border_source')}), colour {s.get('color')}, {report['images']} image(s)")
    return "\n".join(lines)


COMPARED_SETTINGS = ("crop_border", "color", "lpips_net", "reference_protocol")


def compare_reports(reports: list[dict], names: list[str] | None = None) -> str:
    """Side-by-side table of several reports with differences to the first (paper Table 1 style).

    Args:
        reports: parsed ``report.json`` dicts (at least 2).
        names: column names (defaults to A, B, C...).

    Returns:
        The table, followed by a warning line for each setting that differs between reports.
    """
    if len(reports) < 2:
        raise ValueError(f"compare needs at least 2 reports, got {len(reports)}")
    names = list(names) if names else [chr(ord("A") + i) for i in range(len(reports))]
    if len(names) != len(reports):
        raise ValueError(f"{len(names)} name(s) given for {len(reports)} reports")
    width = max(10, *(len(n) for n in names))
    head = f"{'metric':<20}" + "".join(f" {n:>{width}}" for n in names) + "".join(f" {'Δ ' + n:>{width + 9}}" for n in names[1:])
    lines = [head, "-" * len(head)]
    for name in (m for m in METRICS if any(m in r["metrics"] for r in reports)):
        vals = [metric_value(r["metrics"].get(name, {})) for r in reports]
        cells = [_fmt(v, name) if v is not None else r["metrics"].get(name, {}).get("status", "absent") for v, r in zip(vals, reports)]
        row = f"{metric_label(name, reports[0]):<20}" + "".join(f" {c:>{width}}" for c in cells)
        for v in vals[1:]:
            if v is None or vals[0] is None:
                row += f" {'-':>{width + 9}}"
                continue
            d = v - vals[0] if v != vals[0] else 0.0
            if abs(d) < (0.005 if name in ("psnr", "fid") else 0.00005):
                d = 0.0  # below the printed precision (e.g. CPU vs GPU round-off): not a difference
            verdict = "same" if d == 0 else ("better" if (d > 0) == HIGHER_IS_BETTER[name] else "worse")
            row += f" {('+' if d >= 0 else '') + _fmt(d, name) + ' (' + verdict + ')':>{width + 9}}"
        lines.append(row)
    for key in COMPARED_SETTINGS:
        seen = [r.get("settings", {}).get(key) for r in reports]
        if any(s != seen[0] for s in seen):
            lines.append(f"warning: setting {key!r} differs: " + ", ".join(f"{n}={s}" for n, s in zip(names, seen)))
    counts = [r.get("images") for r in reports]
    if any(c != counts[0] for c in counts):
        lines.append("warning: image counts differ: " + ", ".join(f"{n}={c}" for n, c in zip(names, counts)))
    return "\n".join(lines)
