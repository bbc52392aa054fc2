"""``refsr demo``: the whole chain on real photos that ship with scikit-image.

The target is the left view of scikit-image's stereo motorcycle; the reference
collection holds the right view (the same scene seen from another position: real,
matching detail) and two unrelated photos (so the CLIP stage has something to rank). The
demo degrades the target, indexes the references, matches fragments, restores the LR
image with the shipped model without and with the matched references, evaluates both
(and bicubic upsampling) against the HR, and draws a side-by-side picture.

Every stage is the library function behind the matching subcommand, writing the same
files, so the output folder doubles as a worked example of the file formats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import io
from .errors import MissingWeightsError

log = logging.getLogger(__name__)

#: scikit-image photos used as (name, role): the target and the reference collection.
TARGET = "motorcycle_left"
REFERENCES = ("motorcycle_right", "chelsea", "coffee")


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and its metric table."""

    out_dir: Path
    picture: Path
    report: Path
    table: str
    notes: list[str] = field(default_factory=list)


def skimage_photo(name: str) -> np.ndarray:
    """A photo shipped with scikit-image as (H, W, 3) float32 RGB in [0, 1].

    ``motorcycle_left``/``motorcycle_right`` are the two views of ``stereo_motorcycle``.
    """
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def _demo_metrics(crop: int, scale: int, notes: list[str]) -> list[str]:
    """PSNR, SSIM, LPIPS and, when the ``crop`` square less a border of ``scale`` holds the
    two 96x96 blocks it needs, NIQE (otherwise a note says why it is missing)."""
    from .metrics.niqe import BLOCK, size_problem

    problem = size_problem(crop, crop, scale)
    if problem:
        notes.append(f"NIQE not computed: {problem}; use --crop {2 * BLOCK + 2 * scale} or more")
        return ["psnr", "ssim", "lpips"]
    return ["psnr", "ssim", "lpips", "niqe"]


def write_photos(out_dir: Path, crop: int) -> tuple[Path, Path]:
    """Write the HR target (a ``crop`` square around the motorcycle) and the references."""
    target = skimage_photo(TARGET)
    h, w = target.shape[:2]
    y0, x0 = max(0, (h - crop) // 2 + 20), max(0, (w - crop) // 2 - 60)  # the engine and front wheel
    target_path = io.write_image(out_dir / "photos" / f"{TARGET}.png", target[y0 : y0 + crop, x0 : x0 + crop])
    ref_dir = out_dir / "references"
    for name in REFERENCES:
        if not (ref_dir / f"{name}.png").exists():
            io.write_image(ref_dir / f"{name}.png", skimage_photo(name))
    return target_path, ref_dir


def _index_references(ref_dir: Path, index_dir: Path, clip_model: str, clip_pretrained: str | None,
                      device: str, notes: list[str]) -> None:
    from .retrieval.embed import EmbedderSpec
    from .retrieval.index import index_refs

    try:
        index_refs([ref_dir], index_dir, EmbedderSpec(clip_model, clip_pretrained), device=device, workers=1)
    except MissingWeightsError as e:
        notes.append(f"CLIP weights unavailable ({e}); stage 1 used random CLIP weights, which only "
                     f"matters for ranking {len(REFERENCES)} reference images")
        index_refs([ref_dir], index_dir, EmbedderSpec(clip_model, None), device=device, workers=1)


def _match(manifest: Path, index_dir: Path, out: Path, matcher: str, patch: int, top_refs: int,
           device: str, notes: list[str]) -> Path:
    from .retrieval.match import MatchSettings, match_queries

    settings = MatchSettings(top_images=len(REFERENCES), top_refs=top_refs, patch=patch, stride=patch // 2)
    try:
        match_queries(manifest, index_dir, out, settings, query_kind="lr", matcher=matcher,
                      save_crops=out.parent / "fragments", device=device)
    except MissingWeightsError as e:
        notes.append(f"matcher {matcher!r} unavailable ({e}); stage 2 used a random ResNet-34")
        match_queries(manifest, index_dir, out, settings, query_kind="lr", matcher="none",
                      save_crops=out.parent / "fragments", device=device, overwrite=True)
    return out


def bicubic_baseline(manifest: str | Path, out_dir: str | Path) -> None:
    """Bicubic x-scale upsampling of every LR image of a pair manifest: the floor row."""
    out_dir = Path(out_dir)
    for rec in io.read_pair_manifest(manifest):
        io.write_image(out_dir / f"{rec['id']}_sr.png", io.upsample_bicubic(io.read_rgb(rec["lr_path"]), rec["scale"]))


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8).copy()
    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def compose_picture(panels: list[tuple[str, np.ndarray]], fragments: list[np.ndarray]) -> np.ndarray:
    """One row of labelled panels (same size, float RGB in [0, 1]) and, under it, the
    reference fragments; returns (H, W, 3) uint8."""
    size = panels[0][1].shape[0]
    row = np.concatenate([_label(p, name) for name, p in panels], axis=1)
    rows = [row]
    if fragments:
        side = max(32, min(size // 2, row.shape[1] // max(1, len(fragments))))
        frags = [cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in fragments]
        strip = _label(np.concatenate(frags, axis=1), "matched reference fragments (best first)")
        pad = np.full((strip.shape[0], row.shape[1] - strip.shape[1], 3), 255, np.uint8)
        rows.append(np.concatenate([strip, pad], axis=1))
    return np.concatenate(rows, axis=0)


def draw_picture(path: Path, panels: list[tuple[str, np.ndarray]], fragments: list[np.ndarray]) -> Path:
    """Write :func:`compose_picture` as a PNG."""
    return io.write_image(path, compose_picture(panels, fragments).astype(np.float32) / 255.0)


def run_demo(
    out_dir: str | Path = "refsr-demo",
    model: str | None = None,
    crop: int = 256,
    steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "laion2b_s34b_b79k",
    matcher: str | None = None,
    patch: int | None = None,
    color_fix: str | None = None,
    color_fix_levels: int | None = None,
    start_strength: float | None = None,
    draws: int | None = None,
    mirror: bool | None = None,
) -> DemoResult:
    """Run degrade -> index-refs -> match -> sample (without and with references) -> evaluate.

    Args:
        out_dir: where every stage writes its files.
        model: a model folder; ``None`` = the shipped default model.
        crop: side of the HR target in pixels (the LR is ``crop / scale``).
        steps: DDIM steps of the sampler; ``None`` = the model's recommended value
            (:func:`refsr.sample.recommended_settings`: 4 for the shipped model), else 50.
        matcher: a ``refsr match --matcher`` spec; ``None`` = ``shipped``, the trained matcher.
        patch: reference fragment size (default: the model's ``ref_size``).
        color_fix: ``wavelet``, ``adain``, ``luma`` or ``none``: match the output's colour to
            the upsampled input (see :mod:`refsr.sample.color_fix`); ``None`` = the model's
            recommended value (luma for the shipped model), else ``none``.
        color_fix_levels: wavelet levels of ``wavelet`` and ``luma`` (see ``refsr sample
            --color-fix-levels``); ``None`` = the model's recommended value (4 for the shipped
            model), else 5.
        start_strength: where the reverse process starts (see ``refsr sample
            --start-strength``); ``None`` = the model's ``recipe.recommended_start_strength``
            (0.5 for the shipped model: with 4 steps one DDIM jump from t = 250), else 1.
        draws: the mean of that many draws of the start noise (see ``refsr sample --draws``);
            ``None`` = the model's ``recipe.recommended_draws``, else 1.
        mirror: every second draw restores the mirror image (see ``refsr sample --mirror``);
            ``None`` = the model's ``recipe.recommended_mirror``, else off.

    Returns:
        :class:`DemoResult` with the picture, the comparison report and the table.
    """
    from .degrade.pipeline import degrade_folder
    from .device import resolve_device
    from .metrics.report import compare_reports, evaluate, write_report
    from .sample.core import SampleSettings, resolve_settings
    from .sample.loading import load_model
    from .sample.restore import sample_files

    out_dir, notes = Path(out_dir), []
    dev = resolve_device(device)
    net, model_path = load_model(model, dev)
    patch = patch or net.ref_size
    top_refs = getattr(net, "max_refs", 4) or 4

    target, ref_dir = write_photos(out_dir, crop)
    pairs = out_dir / "pairs"
    degrade_folder([target], pairs, scale=net.scale, crop=None, seed=seed, workers=1)
    manifest = pairs / "manifest.jsonl"
    _index_references(ref_dir, out_dir / "refs.index", clip_model, clip_pretrained, str(dev), notes)
    matches = _match(manifest, out_dir / "refs.index", out_dir / "matches.jsonl",
                     matcher or "shipped", patch, top_refs, str(dev), notes)

    settings = resolve_settings(net, SampleSettings(sampler="ddim", steps=steps, color_fix=color_fix,
                                                    color_fix_levels=color_fix_levels, start_strength=start_strength,
                                                    draws=draws, mirror=mirror))  # as `refsr sample`
    restored = out_dir / "restored"
    bicubic_baseline(manifest, restored / "bicubic")
    # always redone (seconds): a rerun with other --steps/--color-fix shows its own result
    sample_files([manifest], restored / "without_refs", model=net, settings=settings, seed=seed, device=dev,
                 overwrite=True)
    sample_files([manifest], restored / "with_refs", model=net, matches=matches, settings=settings, seed=seed,
                 device=dev, overwrite=True)

    names = ["bicubic", "without_refs", "with_refs"]
    reports = []
    metrics = _demo_metrics(crop // net.scale * net.scale, net.scale, notes)
    for name in names:
        ev = evaluate(restored / name, manifest, metrics=metrics, device=dev,
                      protocol="demo: matched fragments of motorcycle_right (+2 distractors)")
        reports.append(write_report(out_dir / f"report_{name}.json", ev))
    loaded = [io.read_json(r) for r in reports]
    table = compare_reports(loaded, ["bicubic", "LDM (no refs)", "LDM+CA (refs)"])
    io.write_json(out_dir / "report.json", {"format": "refsr.demo/1", "model": str(model_path),
                                            "steps": settings.steps, "seed": seed, "color_fix": settings.color_fix,
                                            "color_fix_levels": settings.color_fix_levels,
                                            "start_strength": settings.start_strength,
                                            "draws": settings.draws, "mirror": settings.mirror, "notes": notes,
                                            "reports": dict(zip(names, loaded))})

    rec = io.read_pair_manifest(manifest)[0]
    panels = [("LR, bicubic x%d" % net.scale, io.read_rgb(restored / "bicubic" / f"{rec['id']}_sr.png")),
              ("restored, no references", io.read_rgb(restored / "without_refs" / f"{rec['id']}_sr.png")),
              ("restored, with references", io.read_rgb(restored / "with_refs" / f"{rec['id']}_sr.png")),
              ("ground truth", io.read_rgb(rec["hr_path"]))]
    frags = [io.read_rgb(p) for p in sorted((out_dir / "fragments").rglob("*.png"))][:top_refs]
    picture = draw_picture(out_dir / "comparison.png", panels, frags)
    return DemoResult(out_dir, picture, out_dir / "report.json", table, notes)
