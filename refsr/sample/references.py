"""Reference fragments for each input: from ``--refs`` images or a ``matches.jsonl``.

``--refs`` gives whole images used for every input: each is cut to its centred square
(the largest one that fits) and resized to the model's ``ref_size``. ``--matches`` gives
each input its own fragments: the ``box`` ``[x, y, w, h]`` of each match record (squares,
as ``refsr match`` writes them) is cropped from the reference image and resized to
``ref_size`` (a non-square box is resized, not padded). Fragments are (S, S, 3) float32
RGB in [0, 1]; the sampler maps them to [-1, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..io import list_images, read_image, read_matches

log = logging.getLogger(__name__)


@dataclass
class Fragment:
    """One reference fragment: pixels and where they came from (for ``run.json``)."""

    pixels: np.ndarray | None  # (S, S, 3) float32 in [0, 1]; None: not cut (already encoded)
    path: Path
    box: list[int]  # [x, y, w, h] in the reference image
    score: float | None = None

    def record(self) -> dict:
        rec = {"path": str(self.path), "box": list(self.box)}
        if self.score is not None:
            rec["score"] = float(self.score)
        return rec


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) float32 -> (size, size, 3): INTER_AREA when shrinking, cubic otherwise."""
    shrink = rgb.shape[0] > size or rgb.shape[1] > size
    out = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _read_reference(path: Path) -> np.ndarray:
    try:
        return read_image(path).rgb
    except InputError as e:
        raise InputError(f"reference {e}") from None


def centre_square_box(height: int, width: int) -> list[int]:
    """[x, y, w, h] of the largest centred square of an ``height`` x ``width`` image."""
    side = min(height, width)
    return [(width - side) // 2, (height - side) // 2, side, side]


def crop_box(rgb: np.ndarray, box, path: Path | str = "<image>") -> np.ndarray:
    """Crop ``box`` [x, y, w, h] from (H, W, 3) ``rgb``, clipped to the image.

    Raises:
        InputError: the box lies outside the image or is empty, naming ``path``.
    """
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, rgb.shape[1]), min(y + h, rgb.shape[0])
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{path}: box {list(box)} is outside the {rgb.shape[1]}x{rgb.shape[0]} image")
    return rgb[y0:y1, x0:x1]


def cut_fragment(rgb: np.ndarray, box, size: int, path: Path | str = "<image>") -> np.ndarray:
    """The reference fragment of ``box`` [x, y, w, h] in (H, W, 3) float32 ``rgb`` in [0, 1]:
    cropped (clipped to the image) and resized to (size, size, 3) float32 in [0, 1]
    (:func:`resize_square`). The one implementation used by training and sampling.

    Raises:
        InputError: the box lies outside the image or is empty, naming ``path``.
    """
    return resize_square(crop_box(rgb, box, path), size)


def load_global_refs(paths, size: int, max_refs: int | None = None) -> list[Fragment]:
    """Fragments from ``--refs`` files/folders: centred square of each image, resized.

    Raises:
        InputError: a path that does not exist or an image that cannot be read, naming it.
    """
    if not paths:
        return []
    files = list_images(paths)
    if max_refs is not None and len(files) > max_refs:
        log.warning("using the first %d of %d reference images (--max-refs)", max_refs, len(files))
        files = files[:max_refs]
    frags = []
    for path in files:
        rgb = _read_reference(path)
        box = centre_square_box(*rgb.shape[:2])
        frags.append(Fragment(cut_fragment(rgb, box, size, path), path, box))
    return frags


@dataclass
class MatchTable:
    """Match records of a ``matches.jsonl``, looked up by pair id, query path or stem."""

    by_id: dict = field(default_factory=dict)
    by_query: dict = field(default_factory=dict)
    by_stem: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path) -> "MatchTable":
        table = cls()
        for rec in read_matches(path, check_files=False):
            table.by_id.setdefault(str(rec["id"]), rec)
            query = (Path(path).parent / rec["query"]).resolve()
            table.by_query.setdefault(query, rec)
            table.by_stem.setdefault(Path(rec["query"]).stem, rec)
        return table

    def lookup(self, image: Path, pair_id: str | None = None) -> dict | None:
        """The record for input ``image`` (from pair ``pair_id`` if known): by id, then by
        resolved query path, then by ``id`` == stem, then by query stem; None if absent."""
        if pair_id is not None and str(pair_id) in self.by_id:
            return self.by_id[str(pair_id)]
        found = self.by_query.get(Path(image).resolve())
        if found is None:
            found = self.by_id.get(Path(image).stem) or self.by_stem.get(Path(image).stem)
        return found


def load_match_refs(record: dict | None, size: int, max_refs: int | None = None, encoded=None) -> list[Fragment]:
    """Fragments of one match record: each ``box`` cropped from its image, resized.

    Each reference file is read once however many of the record's boxes it holds.
    ``encoded(path, box) -> bool``: a fragment it names is not cut (``pixels`` None: the
    caller keeps its encoding), and a file whose fragments all are is not read at all.

    Raises:
        InputError: a reference image that is missing or unreadable, or a bad box, naming it.
    """
    if record is None:
        return []
    refs = record["refs"][:max_refs] if max_refs is not None else record["refs"]
    images: dict[Path, np.ndarray] = {}
    frags = []
    for ref in refs:
        path, box = Path(ref["abs_path"]), list(ref["box"])
        pixels = None
        if encoded is None or not encoded(path, box):
            if path not in images:
                images[path] = _read_reference(path)
            pixels = cut_fragment(images[path], box, size, path)
        frags.append(Fragment(pixels, path, box, ref.get("score")))
    return frags
