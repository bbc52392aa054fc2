"""Stage ``matcher``: contrastive training of the stage-2 patch matcher (InfoNCE).

The network is :class:`refsr.models.matcher.MatcherNet`: the retrieval trunk (a ResNet
cut after ``layer{depth}``) followed by a per-cell projection head (two 1x1 convolutions).
Because the head acts on every cell of the feature map, ``match`` pools the projected map
over its windows exactly as training pools it over a patch: what is trained is what is
scored. This module keeps the pairs, the loss and the stage.

A positive pair (:class:`PositivePairs`) is a clean ``patch`` x ``patch`` fragment of a
photo and a second fragment of the same photo, shifted by up to ``max_shift`` x patch
(so the two overlap), degraded with Real-ESRGAN's second-order model (the torch executor
of :mod:`refsr.degrade`, parameters drawn per sample) and bicubically upsampled back to
the patch size, as ``match --query lr`` sees an LR target. The other fragments of the
batch are the negatives. Loss: symmetric InfoNCE (van den Oord et al. 2018, eq. 4;
CLIP's two-way form) on L2-normalised, spatially averaged projected features.

Run folder: that of :func:`refsr.train.loop.run_training`, plus ``split.json`` (which
images were held out) and ``eval.json`` (held-out location accuracy, see
:mod:`refsr.retrieval.matcher_eval`). ``RUN/model/`` is the matcher folder that
``refsr match --matcher RUN/model`` loads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, MissingWeightsError
from ..models.matcher import EXPORT_DTYPES, MatcherNet, fit_side, load_matcher
from ..cache import LRUCache
from ..io import image_to_tensor, read_rgb, write_json
from ..seeding import rng_for
from .data import image_paths, split_images
from .loop import Stage, TrainOptions, claim_run_folder, run_training, save_grid

log = logging.getLogger("refsr.train")


# ---------------------------------------------------------------------------------------
# The network to start from (the network itself: refsr.models.matcher.MatcherNet)
# ---------------------------------------------------------------------------------------


def build_matcher_net(init: str = "imagenet", arch: str = "resnet34", depth: int = 3, head_dim: int = 128) -> MatcherNet:
    """The network to start training from, in train mode.

    Args:
        init (`str`): a :func:`refsr.models.matcher.load_matcher` spec: ``imagenet``
            (torchvision weights from the torch hub cache), ``none`` (random, seed 0), or a
            matcher (``shipped``, a folder): one with a projection head continues as it is
            (its arch/depth/head_dim win); a trunk alone gets a new ``head_dim`` head.

    Raises:
        MissingWeightsError: ``imagenet`` weights not cached. InputError: a bad file.
    """
    try:
        start = load_matcher(init, "cpu", arch=arch, depth=depth)
    except MissingWeightsError as e:
        raise MissingWeightsError(f"{e}; to train from scratch pass --init none") from None
    if start.config.head_dim is not None:
        return start.train()
    net = MatcherNet(start.config.arch, start.config.depth, head_dim)
    net.trunk.load_state_dict(start.trunk.state_dict())
    return net.train()


# ---------------------------------------------------------------------------------------
# Data: positive pairs
# ---------------------------------------------------------------------------------------


class PositivePairs(torch.utils.data.Dataset):
    """Positive pairs for InfoNCE, indexed by global sample number.

    Item ``g`` -> ``ref`` and ``query`` (3, P, P) float32 in [0, 1] (the query still clean:
    it is degraded on the fly by :class:`MatcherModule`) and ``degrade_key`` (str). The
    query window is the reference window shifted by up to ``max_shift`` x P on each axis
    (clipped to the image); both get the same horizontal flip. Images are downscaled to
    ``max_side`` and reflect-padded to at least P.
    """

    def __init__(self, paths: list[Path], patch: int, seed: int = 0, max_shift: float = 0.25, max_side: int | None = 512):
        from .data import _pad_to

        if not paths:
            raise InputError("no training images")
        self.paths, self.patch, self.seed, self.max_shift, self.max_side = list(paths), patch, seed, max_shift, max_side
        self._pad = _pad_to
        self._cache = LRUCache(256)

    def __len__(self):
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        return self._cache.get(i, lambda: self._pad(fit_side(read_rgb(self.paths[i]), self.max_side), self.patch))

    def __getitem__(self, g: int) -> dict:
        rng = rng_for(self.seed, "matcher-sample", g)
        img = self.image(int(rng.integers(len(self.paths))))
        (h, w), p = img.shape[:2], self.patch
        y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        s = int(self.max_shift * p)
        qy = int(np.clip(y + rng.integers(-s, s + 1), 0, h - p))
        qx = int(np.clip(x + rng.integers(-s, s + 1), 0, w - p))
        ref, query = img[y : y + p, x : x + p], img[qy : qy + p, qx : qx + p]
        if rng.random() < 0.5:
            ref, query = ref[:, ::-1], query[:, ::-1]
        return {"ref": image_to_tensor(ref), "query": image_to_tensor(query), "degrade_key": f"matcher-{g}"}


# ---------------------------------------------------------------------------------------
# Loss and training module
# ---------------------------------------------------------------------------------------


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over a batch: row i of ``q`` and row i of ``k`` are positives,
    all other rows negatives.

    Args:
        q, k: (B, D) L2-normalised embeddings.
        temperature: softmax temperature tau (logits = q k^T / tau).

    Returns:
        ``(loss, top1)``: scalar loss = mean of the two cross-entropies (q->k and k->q,
        van den Oord et al. 2018 eq. 4), and the fraction of rows of ``q`` whose best
        match in ``k`` is their positive.
    """
    logits = q @ k.T / temperature
    target = torch.arange(q.shape[0], device=q.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return loss, (logits.argmax(dim=1) == target).float().mean()


class MatcherModule(nn.Module):
    """``forward(batch, generator) -> (loss, logs)`` for the loop.

    ``batch``: ``ref``, ``query`` (B, 3, P, P) float32 in [0, 1], ``degrade_key`` (B str).
    The query is degraded (Real-ESRGAN, ``scale``) and upsampled back to P bicubically
    without gradients, then both sides go through the same network.
    """

    def __init__(self, net: MatcherNet, scale: int = 4, temperature: float = 0.07, seed: int = 0,
                 preset: str = "realesrgan"):
        super().__init__()
        from ..degrade import resolve_config

        self.net, self.scale, self.temperature, self.seed = net, scale, temperature, seed
        self.degrade_config = resolve_config(preset)

    def degraded(self, query: torch.Tensor, keys) -> torch.Tensor:
        """(B, 3, P, P) clean in [0, 1] -> degraded LR upsampled to (B, 3, P, P) in [0, 1]."""
        from ..degrade import degrade_batch, sample_params
        from ..models.ldm import upsample_lr

        with torch.no_grad():
            params = [sample_params(self.seed, str(k), self.degrade_config) for k in keys]
            lr = degrade_batch(query.float(), params, self.scale)
            up = upsample_lr(lr, size=query.shape[-2:], value_range=(0.0, 1.0))
        return up.to(query.dtype)

    def forward(self, batch: dict, generator=None):
        query = self.degraded(batch["query"], batch["degrade_key"])
        loss, top1 = info_nce(self.net.embed(query), self.net.embed(batch["ref"]), self.temperature)
        return loss, {"batch_top1": top1.detach()}


class MatcherStage(Stage):
    """Train a :class:`MatcherNet` on positive pairs cut from ``train_paths``."""

    name = "matcher"

    def __init__(self, train_paths: list[Path], init: str = "imagenet", arch: str = "resnet34", depth: int = 3,
                 head_dim: int = 128, patch: int = 96, scale: int = 4, temperature: float = 0.07, seed: int = 0,
                 max_shift: float = 0.25, max_side: int | None = 512, preset: str = "realesrgan",
                 export_dtype: str = "float16"):
        if patch % scale:
            raise InputError(f"patch {patch} is not a multiple of the scale {scale}")
        if export_dtype not in EXPORT_DTYPES:
            raise ValueError(f"export dtype {export_dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
        torch.manual_seed(seed)
        self.net = build_matcher_net(init, arch, depth, head_dim)
        self.data = PositivePairs(train_paths, patch, seed, max_shift, max_side)
        self.scale, self.temperature, self.seed, self.preset, self.export_dtype = scale, temperature, seed, preset, export_dtype

    def dataset(self):
        return self.data

    def module(self):
        return MatcherModule(self.net, self.scale, self.temperature, self.seed, self.preset)

    def validate(self, module, batch, path: Path) -> None:
        """Grid: clean reference | degraded, upsampled query."""
        query = module.degraded(batch["query"], batch["degrade_key"])
        save_grid([batch["ref"] * 2 - 1, query * 2 - 1], path)

    def export(self, module, folder: Path) -> None:
        from ..io import replace_dir, temp_dir_beside

        tmp = temp_dir_beside(folder)
        module.net.save_pretrained(tmp, dtype=self.export_dtype)
        replace_dir(tmp, folder)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def train_matcher(data: str | os.PathLike, opts: TrainOptions, init: str = "imagenet", arch: str = "resnet34",
                  depth: int = 3, head_dim: int = 128, patch: int = 96, scale: int = 4, temperature: float = 0.07,
                  holdout: float = 0.1, max_shift: float = 0.25, max_side: int | None = 512,
                  export_dtype: str = "float16", eval_queries: int = 2, eval_stride: int | None = None) -> dict:
    """Train the patch matcher, export ``RUN/model`` and evaluate it on held-out images.

    Steps: 1. split ``data``'s images by image (``holdout``), write ``RUN/split.json``;
    2. :func:`run_training` on positive pairs from the training images; 3. location
    accuracy on the held-out images of the trained matcher, random weights and ImageNet
    weights (when cached), written to ``RUN/eval.json``.

    Returns:
        ``{"model": str, "train_images": int, "held_out": int, "eval": {...}}`` (``eval`` as
        :func:`refsr.retrieval.matcher_eval.compare_matchers`; empty without held-out images).
    """
    from ..device import resolve_device
    from ..retrieval.matcher_eval import compare_matchers

    paths, root = image_paths(data)
    train, held = split_images(paths, root, holdout, opts.seed)
    run = Path(opts.output)
    rel = lambda ps: [Path(os.path.relpath(p, root)).as_posix() for p in ps]  # noqa: E731
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        claim_run_folder(run, opts.resume, opts.overwrite, "matcher")
        opts = dataclasses.replace(opts, overwrite=False)  # claimed (and cleaned) once, here
        write_json(run / "split.json", {"data": str(data), "root": str(Path(root).resolve()), "holdout": holdout, "seed": opts.seed,
                                        "train": rel(train), "held_out": rel(held)})
    stage = MatcherStage(train, init, arch, depth, head_dim, patch, scale, temperature, opts.seed, max_shift,
                         max_side, export_dtype=export_dtype)
    model = run_training(stage, opts)
    result = {"model": str(model), "train_images": len(train), "held_out": len(held), "eval": {}}
    if main and held:
        specs = {"trained": str(model), "random": "none", "imagenet": "imagenet"}
        result["eval"] = compare_matchers(specs, held, patch=patch, stride=eval_stride or patch // 4, scale=scale,
                                          per_image=eval_queries, seed=opts.seed, max_side=max_side,
                                          device=str(resolve_device(opts.device)), depth=stage.net.config["depth"],
                                          arch=arch)
        write_json(run / "eval.json", result)
    return result
