"""Stage 2 of reference retrieval: window scoring with the patch matcher, and the ``match`` stage.

For each query, stage 1 (CLIP, :mod:`refsr.retrieval.index`) proposes the most similar
indexed images; stage 2 scores every ``patch`` x ``patch`` window (at ``stride``) of
each candidate by the cosine similarity between the query's pooled trunk feature and the
window's pooled feature. The trunk runs once per image: window features are averages
of the image's feature map over the window's cells, read from an integral image
(summed-area table), never by re-running the network per window. Overlapping windows of
one image are suppressed (greedy NMS), and the best ``top_refs`` windows are kept. The
network itself is :class:`refsr.models.matcher.MatcherNet` (:func:`refsr.models.matcher.load_matcher`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import MATCH_FORMAT as MATCH_FORMAT_NAME

log = logging.getLogger(__name__)

QUERY_KINDS = ("hr", "lr")  # a manifest query: the HR crop, or the LR image upsampled bicubically
GROUP_BY = ("parent",)  # candidates only from the folder of the query's source


# ---------------------------------------------------------------------------------------
# Windows: enumeration, pooled scores, NMS
# ---------------------------------------------------------------------------------------


def _positions(size: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, plus one flush with the far edge."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def window_boxes(width: int, height: int, patch: int, stride: int) -> np.ndarray:
    """All windows inside a ``width`` x ``height`` image: (N, 4) int64 ``[x, y, w, h]``.

    Along an axis shorter than ``patch`` the window spans the whole axis, so an image
    smaller than the patch gives one window, the whole image.
    """
    pw, ph = min(patch, width), min(patch, height)
    xs, ys = _positions(width, patch, stride), _positions(height, patch, stride)
    return np.array([[x, y, pw, ph] for y in ys for x in xs], dtype=np.int64)


def pooled_window_features(fmap: np.ndarray, boxes: np.ndarray, feat_stride: int) -> np.ndarray:
    """Average of a feature map over each window, via an integral image.

    Args:
        fmap: (C, h, w) float32 feature map of an image (cell (i, j) covers pixels
            [j*s, (j+1)*s) x [i*s, (i+1)*s), s = ``feat_stride``).
        boxes: (N, 4) int ``[x, y, w, h]`` in image pixels.

    Returns:
        (N, C) float32: the mean feature over the cells each window covers (cell edges
        rounded to the nearest cell; at least one cell).
    """
    c, h, w = fmap.shape
    integral = np.zeros((c, h + 1, w + 1), np.float64)
    integral[:, 1:, 1:] = fmap.astype(np.float64).cumsum(1).cumsum(2)
    x0 = np.clip(np.round(boxes[:, 0] / feat_stride).astype(int), 0, w - 1)
    y0 = np.clip(np.round(boxes[:, 1] / feat_stride).astype(int), 0, h - 1)
    x1 = np.clip(np.round((boxes[:, 0] + boxes[:, 2]) / feat_stride).astype(int), x0 + 1, w)
    y1 = np.clip(np.round((boxes[:, 1] + boxes[:, 3]) / feat_stride).astype(int), y0 + 1, h)
    sums = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    return (sums / ((y1 - y0) * (x1 - x0))).T.astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x, y, w, h]`` box with each of (N, 4) boxes."""
    ix = np.clip(np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5, keep: int | None = None) -> list[int]:
    """Greedy non-maximum suppression: indices of kept boxes, best first; a box is
    dropped when its IoU with a better kept box exceeds ``iou``."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if kept and np.any(box_iou(boxes[i].astype(np.float64), boxes[kept].astype(np.float64)) > iou):
            continue
        kept.append(int(i))
        if keep is not None and len(kept) >= keep:
            break
    return kept


def score_windows(query_feat: np.ndarray, fmap: np.ndarray, feat_stride: int, width: int, height: int,
                  patch: int, stride: int, iou: float = 0.5, keep: int = 10):
    """Windows of one candidate image, scored and suppressed.

    Args:
        query_feat: (C,) pooled query feature. fmap: (C, h, w) candidate feature map.

    Returns:
        ``(boxes (K, 4) int, scores (K,) float)``, best first, K <= ``keep``.
    """
    boxes = window_boxes(width, height, patch, stride)
    feats = pooled_window_features(fmap, boxes, feat_stride)
    q = query_feat / max(np.linalg.norm(query_feat), 1e-12)
    scores = feats @ q / np.maximum(np.linalg.norm(feats, axis=1), 1e-12)
    kept = nms(boxes, scores, iou, keep)
    return boxes[kept], scores[kept]


# ---------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------


@dataclass
class Query:
    """One target: ``image`` is the file whose pixels are the query (HR crop, LR or a
    photo); ``source`` is the original image it came from (never a reference)."""

    id: str
    image: Path
    source: Path | None
    source_sha256: str | None = None
    upscale: int = 1  # bicubic upsampling factor applied on reading (LR queries)

    def read(self) -> np.ndarray:
        """(H, W, 3) float32 RGB in [0, 1]; an LR query is upsampled bicubically by ``upscale``."""
        from ..io import read_rgb, upsample_bicubic

        rgb = read_rgb(self.image)
        if self.upscale > 1:
            rgb = upsample_bicubic(rgb, self.upscale)
        return rgb


def read_queries(queries: str | os.PathLike, kind: str = "hr") -> list[Query]:
    """Queries from a folder of images (each is its own source) or a pair manifest
    (``kind`` ``hr``: the HR crop; ``lr``: the LR image upsampled by the pair's scale).

    Raises:
        ValueError: ``kind`` not in (hr, lr). InputError/ManifestError: bad input.
    """
    from ..io import list_images, read_pair_manifest, resolve_path

    if kind not in QUERY_KINDS:
        raise ValueError(f"query kind must be one of {', '.join(QUERY_KINDS)}, got {kind!r}")
    path = Path(queries)
    if path.suffix.lower() == ".jsonl":
        out = []
        for rec in read_pair_manifest(path):
            image, up = (rec["hr_path"], 1) if kind == "hr" else (rec["lr_path"], int(rec["scale"]))
            out.append(Query(rec["id"], image, resolve_path(path, rec["source"]), rec.get("source_sha256"), up))
        return out
    files = list_images(path, recursive=True)
    root = path if path.is_dir() else path.parent
    return [Query(Path(os.path.relpath(f, root)).with_suffix("").as_posix(), f, f) for f in files]


class _ExclusionMap:
    """Which index labels are a query's own source: same sha256 or the same file."""

    def __init__(self, index):
        self.by_sha: dict[str, set[int]] = {}
        self.by_path: dict[str, int] = {}
        self.by_parent: dict[str, list[int]] = {}
        for it in index.items:
            p = index.abs_path(it).resolve()
            self.by_sha.setdefault(it["sha256"], set()).add(it["label"])
            self.by_path[str(p)] = it["label"]
            self.by_parent.setdefault(str(p.parent), []).append(it["label"])
        self._sha_cache: dict[str, str] = {}

    def _sha(self, path: Path) -> str | None:
        from ..io import sha256_file

        key = str(path)
        if key not in self._sha_cache:
            self._sha_cache[key] = sha256_file(path) if path.is_file() else None
        return self._sha_cache[key]

    def excluded(self, q: Query) -> set[int]:
        out: set[int] = set()
        shas = {q.source_sha256, self._sha(q.image.resolve())}
        if q.source is not None:
            src = q.source.resolve()
            shas.add(self._sha(src))
            if str(src) in self.by_path:
                out.add(self.by_path[str(src)])
        for sha in shas - {None}:
            out |= self.by_sha.get(sha, set())
        return out

    def group(self, q: Query) -> list[int]:
        """Labels in the folder of the query's source (its own folder for a plain image)."""
        src = (q.source or q.image).resolve()
        return self.by_parent.get(str(src.parent), [])


# ---------------------------------------------------------------------------------------
# The match stage
# ---------------------------------------------------------------------------------------


@dataclass
class MatchStats:
    """What a ``match`` run did."""

    output: Path
    queries: int = 0
    matched: int = 0
    resumed: int = 0
    skipped: bool = False
    merged: bool = False


def merge_matches(output: str | os.PathLike, n: int | None = None) -> Path:
    """Merge the shard parts ``NAME.shard-K-of-N.jsonl`` of ``output`` into ``output``, in
    query order: the lines of one unsharded run (:mod:`refsr.shards`).

    Raises:
        InputError: a missing part, or parts made with other settings or index (named).
    """
    from ..shards import merge_jsonl

    def same_run(parts):
        runs = {json.dumps(r.get("settings"), sort_keys=True) for part in parts for r in part}
        if len(runs) > 1:
            raise InputError(f"{output}: cannot merge, its shard parts were made with different settings or "
                             "index; rerun the odd shards with --overwrite")

    return merge_jsonl(output, n, check=same_run)


def feature_map(net, rgb: np.ndarray, device) -> np.ndarray:
    """(H, W, 3) float32 [0, 1] image -> (C, h, w) float32 feature map of the matcher."""
    import torch

    from ..io import image_to_tensor

    with torch.no_grad():
        return net(image_to_tensor(rgb, device=device, batch=True))[0].float().cpu().numpy()


class _FeatureCache:
    """Feature maps of candidate images, computed once per image (the ``size`` most recently used kept)."""

    def __init__(self, net, device, size: int = 64):
        from ..cache import LRUCache

        self.net, self.device, self._maps = net, device, LRUCache(size)

    def get(self, key, path: Path) -> tuple[np.ndarray, int, int]:
        from ..io import read_rgb

        def compute():
            rgb = read_rgb(path)
            return feature_map(self.net, rgb, self.device), rgb.shape[1], rgb.shape[0]

        return self._maps.get(key, compute)


@dataclass
class MatchSettings:
    """Options of :func:`match_queries` that shape each result."""

    top_images: int = 20
    top_refs: int = 10
    patch: int = 512
    stride: int = 256
    group_by: str | None = None  # None or "parent"
    nms_iou: float = 0.5

    def check(self) -> None:
        for name in ("top_images", "top_refs", "patch", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_by is not None and self.group_by not in GROUP_BY:
            raise ValueError(f"group_by must be None or one of {', '.join(GROUP_BY)}, got {self.group_by!r}")


def match_one(q: Query, clip, index, excl: _ExclusionMap, cache: _FeatureCache, net, device,
              settings: MatchSettings) -> list[dict]:
    """Best reference windows for one query: ``[{label, box, score, image_score}]``, best first."""
    rgb = q.read()
    vector = clip.embed([rgb])[0]
    within = excl.group(q) if settings.group_by == "parent" else None
    candidates = index.search(vector, settings.top_images, exclude=excl.excluded(q), within=within)
    qfeat = feature_map(net, rgb, device).mean(axis=(1, 2))
    found = []
    for label, image_score in candidates:
        item = index.item_by_label(label)
        fmap, w, h = cache.get(label, index.abs_path(item))
        boxes, scores = score_windows(qfeat, fmap, net.stride, w, h, settings.patch, settings.stride,
                                      settings.nms_iou, settings.top_refs)
        found += [{"label": label, "box": [int(v) for v in b], "score": float(s), "image_score": image_score}
                  for b, s in zip(boxes, scores)]
    found.sort(key=lambda r: (-r["score"], -r["image_score"], r["label"], r["box"]))
    return found[: settings.top_refs]


def _save_crops(folder: Path, q: Query, refs: list[dict], index) -> None:
    from ..io import read_rgb, safe_name, write_image

    for rank, ref in enumerate(refs):
        x, y, w, h = ref["box"]
        rgb = read_rgb(index.abs_path(index.item_by_label(ref["label"])))
        write_image(folder / safe_name(q.id) / f"{rank:02d}.png", rgb[y:y + h, x:x + w])  # an id ".." stays in DIR


def _load_partial(partial: Path, run: dict) -> dict[str, dict]:
    """Records of an interrupted run made with the same ``run`` settings (the last line may
    be torn: it is ignored; lines made with other settings are not reused)."""
    done = {}
    if partial.is_file():
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                if rec.get("settings") == run:
                    done[rec["id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                continue
    return done


def run_settings(settings: MatchSettings, query_kind: str, matcher: str, index_dir: Path) -> dict:
    """What shapes a matches file, recorded in each of its lines (``settings``): the
    options, the matcher and the index generation with its items checksum."""
    from dataclasses import asdict

    from ..io import read_json

    meta = read_json(Path(index_dir) / "index.json")
    return {"query": query_kind, **asdict(settings), "matcher": matcher,
            "index": {"generation": meta.get("generation"), "items_sha256": meta.get("items_sha256")}}


def check_existing_output(out: Path, todo: list[Query], run: dict) -> None:
    """An existing matches file is kept only if it was made from the same queries, index
    and settings; anything else is refused (with ``--overwrite`` it is redone).

    Raises:
        InputError: naming the file and what differs.
    """
    from ..errors import InputError, ManifestError
    from ..io import read_jsonl, relative_path

    hint = "pass --overwrite to redo it, or choose another -o"
    try:
        lines = read_jsonl(out)
    except ManifestError as e:
        raise InputError(f"{e}; the existing output is not a matches file: {hint}") from None
    if [(r.get("id"), r.get("query")) for r in lines] != [(q.id, relative_path(out, q.image)) for q in todo]:
        raise InputError(f"{out}: exists but was made from other queries ({len(lines)} lines for {len(todo)} "
                         f"queries now); {hint}")
    for r in lines:
        old = r.get("settings")
        if old != run:
            what = ("no recorded settings (an older refsr)" if not isinstance(old, dict) else
                    ", ".join(f"{k} {old.get(k)!r} -> {run[k]!r}" for k in run if old.get(k) != run[k]))
            raise InputError(f"{out}: exists but was made with other settings or index ({what}); {hint}")


def match_queries(
    queries: str | os.PathLike, index_dir: str | os.PathLike, output: str | os.PathLike,
    settings: MatchSettings | None = None, query_kind: str = "hr", matcher: str = "shipped",
    save_crops: str | os.PathLike | None = None, device: str = "cpu", shard: tuple[int, int] = (0, 1),
    overwrite: bool = False, embedder_spec=None,
) -> MatchStats:
    """Run both retrieval stages for every query and write a matches file.

    Writes ``output`` (``refsr.matches/1`` JSON Lines, one line per query in query order,
    reference paths relative to the output's folder); with ``shard`` K/N, only every
    N-th query into its part ``matches.shard-K-of-N.jsonl``, and the shard that finds every part
    written merges them into ``output`` (:func:`merge_matches`). Results are appended to a hidden
    ``.partial`` file as they come, so an interrupted run resumes; an existing output is
    kept when it was made from the same queries, index and settings (each line records
    them, :func:`run_settings`), refused otherwise, and redone with ``overwrite``.

    Args:
        embedder_spec (`EmbedderSpec`, optional): the CLIP model to embed queries with;
            by default the one recorded in the index (a different one is refused).

    Raises:
        InputError: bad queries, an embedder other than the index's, or an existing output
            made from other queries, index or settings.
        MissingWeightsError: CLIP or matcher weights not available offline.
    """
    from ..device import prefer_channels_last
    from ..io import relative_path, select_shard, write_jsonl
    from ..models.matcher import load_matcher
    from ..progress import progress
    from ..shards import finish_shard, part_path
    from .embed import Embedder
    from .index import open_index

    settings = settings or MatchSettings()
    settings.check()
    out = part_path(output, shard)
    stats = MatchStats(out)
    all_queries = read_queries(queries, query_kind)
    todo = select_shard(all_queries, shard)
    stats.queries = len(todo)
    run = run_settings(settings, query_kind, matcher, Path(index_dir))
    if out.exists() and not overwrite:
        check_existing_output(out, todo, run)
        stats.skipped = True
        stats.merged = finish_shard(output, shard, merge_matches)
        return stats
    index = open_index(index_dir)
    clip = Embedder(embedder_spec or Embedder.spec_for(index.identity), device=device)
    index.check_identity(clip.identity)
    net = prefer_channels_last(load_matcher(matcher, device))
    excl, cache = _ExclusionMap(index), _FeatureCache(net, device)
    partial = out.with_name(f".{out.name}.partial")
    done = {} if overwrite else _load_partial(partial, run)
    stats.resumed = sum(q.id in done for q in todo)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w" if overwrite else "a", encoding="utf-8") as f:
        for q in progress([q for q in todo if q.id not in done], desc="matching", unit="query"):
            refs = match_one(q, clip, index, excl, cache, net, device, settings)
            if save_crops:
                _save_crops(Path(save_crops), q, refs, index)
            done[q.id] = {"format": MATCH_FORMAT_NAME, "id": q.id, "query": relative_path(out, q.image),
                          "refs": [{"path": relative_path(out, index.abs_path(index.item_by_label(r["label"]))),
                                    "box": r["box"], "score": r["score"], "image_score": r["image_score"]}
                                   for r in refs], "matcher": matcher, "settings": run}
            f.write(json.dumps(done[q.id], separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
            stats.matched += 1
    write_jsonl(out, [done[q.id] for q in todo])
    partial.unlink(missing_ok=True)
    stats.merged = finish_shard(output, shard, merge_matches)
    return stats
