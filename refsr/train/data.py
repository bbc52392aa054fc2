"""Training datasets, indexed by a global sample number so that every draw is reproducible.

Sample ``g`` of a run is a pure function of ``(seed, g)`` (``refsr.seeding.rng_for``): the
image, the crop, the references and their order do not depend on worker count, process
count or on where a resumed run restarts. :class:`StepSampler` hands each process its
sample numbers for each optimizer step.

Tensors are float32 in [-1, 1], layout (3, H, W).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import InputError
from ..cache import LRUCache
from ..io import IMAGE_EXTENSIONS, image_to_tensor, list_images, read_matches, read_pair_manifest, read_rgb
from ..seeding import rng_for

log = logging.getLogger("refsr.train")


def _pad_to(rgb: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad an image smaller than ``size`` on either axis."""
    h, w = rgb.shape[:2]
    if h >= size and w >= size:
        return rgb
    return cv2.copyMakeBorder(rgb, 0, max(size - h, 0), 0, max(size - w, 0), cv2.BORDER_REFLECT_101)


def image_paths(data: str | os.PathLike) -> tuple[list[Path], Path]:
    """Images of ``data`` (a folder, searched recursively; a pair manifest's HR crops; or a
    ``.txt`` list of image paths, one per line, relative to the list's folder) and the root
    their names are taken relative to.

    Raises:
        InputError: neither a folder nor a .jsonl manifest nor a .txt list, a listed file
            that does not exist, or no images.
    """
    data = Path(data)
    if data.suffix.lower() == ".txt" and data.is_file():
        lines = [line.strip() for line in data.read_text(encoding="utf-8").splitlines()]
        paths, root = [data.parent / line for line in lines if line and not line.startswith("#")], data.parent
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{data}: {len(missing)} listed image(s) do not exist (first: {missing[0]})")
    elif data.suffix.lower() == ".jsonl":
        paths, root = [Path(r["hr_path"]) for r in read_pair_manifest(data)], data.parent
    elif data.is_dir():
        paths, root = list_images(data, recursive=True), data
    else:
        raise InputError(f"{data}: expected a folder of images ({', '.join(IMAGE_EXTENSIONS)}), a pair manifest "
                         ".jsonl or a .txt list of images")
    if not paths:
        raise InputError(f"{data}: no images found")
    return sorted(paths), root


def split_images(paths: list[Path], root: Path, holdout: float, seed: int,
                 salt: str = "matcher-split", require_held_out: bool = True) -> tuple[list[Path], list[Path]]:
    """Deterministic split by image: ``(train, held_out)``; an image is held out when
    ``rng_for(seed, salt, its relative path)`` draws below ``holdout`` (so adding images
    never moves another image across the split).

    Raises:
        InputError: a split that leaves no training image (or, with ``require_held_out``,
            no held-out image when ``holdout > 0``).
    """
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    held = {p for p in paths if rng_for(seed, salt, Path(os.path.relpath(p, root)).as_posix()).random() < holdout}
    train, test = [p for p in paths if p not in held], [p for p in paths if p in held]
    if not train or (require_held_out and holdout > 0 and not test):
        raise InputError(f"{root}: {len(paths)} image(s) split into {len(train)} for training and {len(test)} held out "
                         f"(--holdout {holdout}); need at least one of each")
    return train, test


class StepSampler(torch.utils.data.Sampler):
    """Global sample numbers for this process, from optimizer step ``start`` to ``steps``.

    Sample numbers of step s, micro-batch a, process k: a contiguous block of
    ``batch_size`` numbers, so a run with N processes x B covers the same numbers as
    one process with N*B (up to the split).
    """

    def __init__(self, start: int, steps: int, batch_size: int, accumulation: int, rank: int, world: int):
        self.start, self.steps, self.batch, self.accum, self.rank, self.world = start, steps, batch_size, accumulation, rank, world

    def __iter__(self):
        per_step = self.batch * self.accum * self.world
        for s in range(self.start, self.steps):
            for a in range(self.accum):
                first = s * per_step + (a * self.world + self.rank) * self.batch
                yield from range(first, first + self.batch)

    def __len__(self):
        return max(self.steps - self.start, 0) * self.batch * self.accum


class CropDataset(torch.utils.data.Dataset):
    """Random HR crops for the autoencoder, from a folder of images, a pair manifest or a
    list of image paths (see :func:`image_paths`).

    Item ``g`` -> ``{"hr": (3, P, P)}`` in [-1, 1].
    """

    def __init__(self, data: str | Path | list, patch_size: int, seed: int = 0):
        self.paths = list(data) if isinstance(data, (list, tuple)) else image_paths(data)[0]
        if not self.paths:
            raise InputError("no training images")
        self.patch, self.seed = patch_size, seed
        self._cache = LRUCache(256)

    def __len__(self):
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        return self._cache.get(i, lambda: _pad_to(read_rgb(self.paths[i]), self.patch))

    def __getitem__(self, g: int) -> dict:
        rng = rng_for(self.seed, "crop-sample", g)
        img = self.image(int(rng.integers(len(self.paths))))
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        crop = img[y : y + self.patch, x : x + self.patch]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return {"hr": image_to_tensor(crop, (-1, 1))}


class PairDataset(torch.utils.data.Dataset):
    """HR/LR patches with matched reference fragments, for the diffusion stage.

    Item ``g`` -> ``hr`` (3, P, P), ``lr`` (3, P/scale, P/scale), ``refs`` (N, 3, S, S)
    in [-1, 1] and ``ref_mask`` (N,) bool (True = real reference), N = ``max_refs``.
    References: a random subset of 1..N of the target's matches in random order, or none
    with probability ``ref_dropout``; each is the match's box, resized to S x S.
    With probability ``self_ref_fraction`` (of the samples that get references) one of them,
    in a random slot, is instead a view of the sample's own HR crop (:func:`self_view_box`):
    a reference that holds the target's content, as a stereo view or another photo of the
    same object would, which matches from other photos never give; ``self_ref_box`` (4,)
    is its box in the HR crop, all -1 without one.
    With ``lr_from_hr`` the LR patch is omitted (degraded on the fly by the trainer).

    Raises:
        InputError / ManifestError: missing images, matches whose ids are not in the
            manifest, an LR image whose size is not HR / scale.
    """

    def __init__(self, manifest, patch_size, scale, matches=None, ref_size=None, max_refs=0,
                 ref_dropout=0.0, seed=0, lr_from_hr=False, self_ref_fraction=0.0):
        if not 0.0 <= self_ref_fraction <= 1.0:
            raise ValueError(f"self reference fraction must be in [0, 1], got {self_ref_fraction}")
        self.pairs = read_pair_manifest(manifest)
        self.self_ref_fraction = float(self_ref_fraction)
        self.patch, self.scale, self.seed, self.lr_from_hr = patch_size, scale, seed, lr_from_hr
        self.ref_size, self.max_refs, self.ref_dropout = ref_size or patch_size, max_refs, ref_dropout
        if patch_size % scale:
            raise InputError(f"patch size {patch_size} is not a multiple of the scale {scale}")
        self.refs = _index_matches(matches, self.pairs, manifest) if matches else {}
        self._cache = LRUCache(512)

    def __len__(self):
        return len(self.pairs)

    def _cached(self, key, load):
        return self._cache.get(key, load)

    def _pair(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        rec = self.pairs[i]
        hr = self._cached(("hr", i), lambda: read_rgb(rec["hr_path"]))
        if self.lr_from_hr:
            return hr, None
        lr = self._cached(("lr", i), lambda: read_rgb(rec["lr_path"]))
        if lr.shape[0] * self.scale != hr.shape[0] or lr.shape[1] * self.scale != hr.shape[1]:
            raise InputError(f"{rec['lr_path']}: LR size {lr.shape[1]}x{lr.shape[0]} is not HR size "
                             f"{hr.shape[1]}x{hr.shape[0]} / {self.scale}")
        return hr, lr

    def _fragment(self, ref: dict) -> np.ndarray:
        """The match's fragment, cut as ``refsr sample --matches`` cuts it (a box outside its
        image is an InputError naming the file, as there)."""
        from ..sample.references import cut_fragment

        load = lambda: cut_fragment(read_rgb(ref["abs_path"]), ref["box"], self.ref_size, ref["abs_path"])  # noqa: E731
        return self._cached(("ref", str(ref["abs_path"]), tuple(ref["box"])), load)

    def _references(self, pair_id: str, rng, hr: np.ndarray, patch_box: list[int]):
        """(refs, ref_mask, self_ref_box) of one sample (see the class docstring)."""
        refs = torch.zeros(self.max_refs, 3, self.ref_size, self.ref_size)
        mask = torch.zeros(self.max_refs, dtype=torch.bool)
        self_box = torch.full((4,), -1, dtype=torch.long)
        cands = self.refs.get(pair_id, [])
        if not cands or self.max_refs == 0 or rng.random() < self.ref_dropout:
            return refs, mask, self_box
        n = int(rng.integers(1, min(self.max_refs, len(cands)) + 1))
        for j, k in enumerate(rng.permutation(len(cands))[:n]):
            refs[j] = image_to_tensor(self._fragment(cands[k]), (-1, 1))
            mask[j] = True
        if self.self_ref_fraction > 0 and rng.random() < self.self_ref_fraction:  # (drawn only then: runs
            from ..sample.references import cut_fragment                          # without it keep their stream)

            box = self_view_box(hr.shape[0], hr.shape[1], patch_box, rng)
            refs[int(rng.integers(n))] = image_to_tensor(cut_fragment(hr, box, self.ref_size), (-1, 1))
            self_box = torch.tensor(box)
        return refs, mask, self_box

    def __getitem__(self, g: int) -> dict:
        rng = rng_for(self.seed, "pair-sample", g)
        i = int(rng.integers(len(self.pairs)))
        hr, lr = self._pair(i)
        p, s = self.patch, self.scale
        hr = _pad_to(hr, p)
        lh, lw = hr.shape[0] // s, hr.shape[1] // s
        y, x = int(rng.integers(lh - p // s + 1)), int(rng.integers(lw - p // s + 1))
        item = {"hr": image_to_tensor(hr[y * s : y * s + p, x * s : x * s + p], (-1, 1)), "index": i}
        if lr is not None:
            lr = _pad_to(lr, p // s)
            item["lr"] = image_to_tensor(lr[y : y + p // s, x : x + p // s], (-1, 1))
        else:  # degraded on the fly by the trainer, with parameters drawn from this key
            item["degrade_key"] = f"sample-{g}"
        item["refs"], item["ref_mask"], self_box = self._references(self.pairs[i]["id"], rng, hr, [x * s, y * s, p, p])
        if self.self_ref_fraction > 0:
            item["self_ref_box"] = self_box
        return item


def self_view_box(height: int, width: int, patch_box, rng) -> list[int]:
    """A square [x, y, w, w] in a ``height`` x ``width`` HR crop that shows the training patch
    ``patch_box`` [x, y, p, p] (at least its centre) at another scale and position: side
    uniform in [p, min(height, width)], centre shifted from the patch's by up to p/4 on
    each axis, then moved inside the crop. Cut with :func:`refsr.sample.references.cut_fragment`
    it is a reference that holds the target, at the scale a matched window of the crop's
    size would have."""
    px, py, p, _ = (int(v) for v in patch_box)
    side = int(rng.integers(p, max(p, min(height, width)) + 1))
    cx = px + p / 2 + rng.uniform(-p / 4, p / 4)
    cy = py + p / 2 + rng.uniform(-p / 4, p / 4)
    x = int(np.clip(round(cx - side / 2), 0, max(width - side, 0)))
    y = int(np.clip(round(cy - side / 2), 0, max(height - side, 0)))
    return [x, y, side, side]


def _index_matches(matches, pairs: list[dict], manifest) -> dict[str, list[dict]]:
    """Matches by pair id. Raises InputError if an id is not a pair of the manifest."""
    records = read_matches(matches)
    ids = {p["id"] for p in pairs}
    unknown = [r["id"] for r in records if r["id"] not in ids]
    if unknown:
        raise InputError(f"{matches}: {len(unknown)} match id(s) are not pairs of {manifest} "
                         f"(first: {unknown[0]!r}); was it made from another manifest?")
    by_id = {r["id"]: r["refs"] for r in records}
    if not by_id.keys() & ids:
        raise InputError(f"{matches}: no match ids in common with {manifest}")
    missing = len(ids - by_id.keys())
    if missing:
        log.info("%d of %d pairs have no matches entry; they train without references", missing, len(ids))
    return by_id
