"""Location accuracy of a patch matcher: does it find where a degraded query came from?

Protocol (``compare_matchers``): the candidates are a set of held-out photos (downscaled
to ``max_side``). From each, ``per_image`` query windows are drawn among the ``patch`` x
``patch`` windows at ``stride`` (:func:`refsr.retrieval.match.window_boxes`); each query
crop is degraded with Real-ESRGAN's model (numpy executor, parameters from ``(seed, query
id)``) at ``scale`` and bicubically upsampled back to the patch size. Every window of
every candidate is scored as ``match`` scores it (cosine of pooled features, greedy NMS
per image, ``keep`` windows per image), all candidates are ranked together, and a query
is found at top-k when one of the k best windows lies in its own image with IoU >=
``iou`` against its true box.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MissingWeightsError

log = logging.getLogger(__name__)


@dataclass
class EvalQuery:
    """A query: ``rgb`` (P, P, 3) float32 in [0, 1], cut from candidate ``image`` at ``box``."""

    id: str
    image: int
    box: np.ndarray  # [x, y, w, h]
    rgb: np.ndarray


def load_candidates(paths: list[Path], max_side: int | None = 512) -> list[np.ndarray]:
    """Candidate images as (H, W, 3) float32 in [0, 1], longer side at most ``max_side``."""
    from ..io import read_rgb
    from ..models.matcher import fit_side

    return [fit_side(read_rgb(p), max_side) for p in paths]


def make_queries(images: list[np.ndarray], patch: int, stride: int, per_image: int = 2, scale: int = 4,
                 seed: int = 0, preset: str | None = "realesrgan") -> list[EvalQuery]:
    """``per_image`` query windows per image (distinct, drawn from ``(seed, image index)``),
    degraded with ``preset`` at ``scale`` and upsampled back (``preset=None``: clean crops).

    Raises:
        ValueError: ``patch`` not a multiple of ``scale`` when degrading.
    """
    from ..degrade import degrade_image, resolve_config, sample_params
    from ..io import upsample_bicubic
    from ..seeding import rng_for
    from .match import window_boxes

    if preset is not None and patch % scale:
        raise ValueError(f"patch {patch} is not a multiple of the scale {scale}")
    config = resolve_config(preset) if preset is not None else None
    queries = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if h < patch or w < patch:
            log.warning("candidate %d (%dx%d) is smaller than the patch %d: no query from it", i, w, h, patch)
            continue
        boxes = window_boxes(w, h, patch, stride)
        picks = rng_for(seed, "matcher-eval", i).permutation(len(boxes))[:per_image]
        for j, b in enumerate(boxes[picks]):
            x, y = int(b[0]), int(b[1])
            crop = np.ascontiguousarray(img[y : y + patch, x : x + patch])
            qid = f"{i}-{j}"
            if config is not None:
                _, lr = degrade_image(crop, sample_params(seed, f"matcher-eval-{qid}", config), scale)
                crop = upsample_bicubic(lr, size=(patch, patch)).astype(np.float32)
            queries.append(EvalQuery(qid, i, b.copy(), crop))
    return queries


def location_accuracy(net, images: list[np.ndarray], queries: list[EvalQuery], patch: int, stride: int,
                      ks=(1, 10), iou: float = 0.5, nms_iou: float = 0.5, device: str = "cpu") -> dict:
    """Top-k location accuracy of ``net`` (a matcher from :func:`refsr.models.matcher.load_matcher`).

    Steps: 1. feature map of each candidate once, pooled window features (integral image)
    L2-normalised; 2. per query: pooled feature, cosine with every window, NMS per image
    keeping max(ks); 3. rank all images' kept windows together; 4. found at k if one of
    the first k is in the query's image with IoU >= ``iou`` against its box.

    Returns:
        ``{"top1": float, "top10": float, ..., "queries": int, "windows": int}`` (one
        ``topK`` per k, fractions in [0, 1]).
    """
    from ..progress import progress
    from .match import box_iou, feature_map, nms, pooled_window_features, window_boxes

    keep = max(ks)
    cands = []
    for img in progress(images, desc="candidate features", unit="image"):
        boxes = window_boxes(img.shape[1], img.shape[0], patch, stride)
        feats = pooled_window_features(feature_map(net, img, device), boxes, net.stride)
        cands.append((boxes, feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)))
    hits = {k: 0 for k in ks}
    for q in progress(queries, desc="queries", unit="query"):
        qf = feature_map(net, q.rgb, device).mean(axis=(1, 2))
        qf = qf / max(np.linalg.norm(qf), 1e-12)
        ranked = []
        for i, (boxes, feats) in enumerate(cands):
            scores = feats @ qf
            ranked += [(float(scores[j]), i, boxes[j]) for j in nms(boxes, scores, nms_iou, keep)]
        ranked.sort(key=lambda r: -r[0])
        found = [i == q.image and box_iou(q.box.astype(np.float64), b[None].astype(np.float64))[0] >= iou
                 for _, i, b in ranked[:keep]]
        first = found.index(True) if True in found else None
        for k in ks:
            hits[k] += first is not None and first < k
    n = max(len(queries), 1)
    return {**{f"top{k}": hits[k] / n for k in ks}, "queries": len(queries),
            "windows": int(sum(len(b) for b, _ in cands))}


def compare_matchers(specs: dict[str, str], paths: list[Path], patch: int = 96, stride: int = 24, scale: int = 4,
                     per_image: int = 2, seed: int = 0, max_side: int | None = 512, device: str = "cpu",
                     depth: int = 3, arch: str = "resnet34") -> dict:
    """Location accuracy of several matchers on the same held-out images and queries.

    Args:
        specs: name -> matcher spec for :func:`refsr.models.matcher.load_matcher` (``shipped``,
            ``imagenet``, ``none`` or a folder); ``imagenet``/``none`` are built with ``arch`` and ``depth``.

    Returns:
        name -> :func:`location_accuracy` result, or ``{"unavailable": reason}`` when the
        weights are missing; plus ``"protocol"``: the settings used.
    """
    from ..models.matcher import load_matcher

    images = load_candidates(paths, max_side)
    queries = make_queries(images, patch, stride, per_image, scale, seed)
    out: dict = {"protocol": {"images": len(images), "patch": patch, "stride": stride, "scale": scale,
                              "per_image": per_image, "seed": seed, "max_side": max_side, "iou": 0.5,
                              "degradation": "realesrgan", "depth": depth, "arch": arch}}
    for name, spec in specs.items():
        try:
            net = load_matcher(spec, device, arch=arch, depth=depth)
        except MissingWeightsError as e:
            out[name] = {"unavailable": str(e)}
            continue
        out[name] = location_accuracy(net, images, queries, patch, stride, device=device)
        log.info("matcher %s (%s): top-1 %.3f, top-10 %.3f over %d queries", name, os.fspath(spec),
                 out[name]["top1"], out[name]["top10"], out[name]["queries"])
    return out
