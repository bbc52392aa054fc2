"""OpenCLIP image embeddings for stage 1 of reference retrieval.

An :class:`Embedder` wraps the image tower of an OpenCLIP model and maps images,
(H, W, 3) float32 RGB in [0, 1], to L2-normalised float32 vectors of length ``dim``.
It is built from a spec: a built-in model name (``ViT-B-32``) or a path to an OpenCLIP
model config JSON, a pretrained tag (``laion2b_s34b_b79k``) or ``none`` (random weights,
seeded so that every run builds the same model), and optionally a local weights file.

Nothing here touches the network: a pretrained tag whose weights are not in the local
caches raises :class:`refsr.errors.MissingWeightsError` naming the file and how to
supply it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError, MissingWeightsError
from ..io import load_state, load_state_dict_file

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0  # `--pretrained none` builds the same random model in every process


@dataclass
class EmbedderSpec:
    """What identifies an embedding model; recorded in ``index.json``.

    Attributes:
        model (`str`): built-in OpenCLIP name, or the path of a model config JSON.
        pretrained (`str` or `None`): a pretrained tag, or ``None`` for random weights.
        weights (`str` or `None`): a local weights file (overrides ``pretrained``).
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    weights: str | None = None
    model_cfg: dict | None = None  # an inline config (as stored in index.json); ``model`` is then its name


@dataclass
class EmbedderIdentity:
    """The facts an index stores to refuse queries from another model."""

    model: str
    pretrained: str | None
    weights_sha256: str | None
    dim: int
    model_cfg: dict | None = field(default=None, compare=False)
    weights_path: str | None = field(default=None, compare=False)  # where the weights were read (a hint)

    def describe(self) -> str:
        source = f"weights sha256 {self.weights_sha256[:12]}" if self.weights_sha256 else f"pretrained {self.pretrained or 'none'}"
        return f"{self.model} ({source}, dim {self.dim})"

    def same_as(self, other: "EmbedderIdentity") -> bool:
        return (self.model, self.pretrained, self.weights_sha256, self.dim, self.model_cfg) == (
            other.model, other.pretrained, other.weights_sha256, other.dim, other.model_cfg)

    def to_json(self) -> dict:
        return {"model": self.model, "pretrained": self.pretrained, "weights_sha256": self.weights_sha256,
                "dim": self.dim, "model_cfg": self.model_cfg,
                "weights_path": self.weights_path}

    @classmethod
    def from_json(cls, d: dict) -> "EmbedderIdentity":
        return cls(d["model"], d.get("pretrained"), d.get("weights_sha256"), int(d["dim"]), d.get("model_cfg"),
                   d.get("weights_path"))


def _read_model_config(model: str) -> tuple[str, dict | None]:
    """``(name, cfg)``: a config JSON path gives its stem and content, a name gives ``(name, None)``."""
    path = Path(model)
    if path.suffix.lower() != ".json":
        return model, None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: model config file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not a valid OpenCLIP model config ({e.msg})") from None
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "embed_dim" not in cfg:
        raise InputError(f"{path}: not an OpenCLIP model config (needs embed_dim, vision_cfg, text_cfg)")
    return path.stem, cfg


def _cached_pretrained_file(name: str, tag: str) -> str:
    """The local file holding OpenCLIP weights ``name``/``tag``, without any download.

    Raises:
        InputError: an unknown tag for this model (listing the known ones).
        MissingWeightsError: a known tag whose weights are not cached.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none known"
        raise InputError(f"unknown pretrained tag {tag!r} for OpenCLIP model {name!r} (known: {known}; or 'none')")
    if cfg.get("file"):
        return cfg["file"]
    hint = "pass --weights FILE (safetensors or weights-only torch file) or copy the cache folder from a machine with network"
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" (default file) or "org/name/file"
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        raise MissingWeightsError(
            f"OpenCLIP weights {name}/{tag} are not cached: {repo}/{names[0]} is missing from {HF_HUB_CACHE}; {hint}")
    url = cfg.get("url", "")
    target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    if os.path.isfile(target):
        return target
    raise MissingWeightsError(f"OpenCLIP weights {name}/{tag} are not cached: {target} is missing ({url}); {hint}")


def _build_clip(spec: EmbedderSpec):
    """The OpenCLIP model of ``spec`` (CPU, eval mode) and its identity minus ``dim``."""
    import open_clip
    import torch

    name, cfg = (spec.model, spec.model_cfg) if spec.model_cfg else _read_model_config(spec.model)
    if cfg is None and open_clip.get_model_config(name) is None:
        raise InputError(f"unknown OpenCLIP model {name!r}; give a built-in name (e.g. ViT-B-32) or a model config .json")
    weights_sha = None
    pretrained = None if spec.weights else spec.pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        if cfg is not None:
            model = open_clip.CLIP(**cfg) if "timm_model_name" not in cfg.get("vision_cfg", {}) else None
            if model is None:
                raise InputError(f"{spec.model}: timm vision towers are not supported in config files")
        else:
            ckpt = _cached_pretrained_file(name, pretrained) if pretrained else None
            model = open_clip.create_model(name, pretrained=ckpt, device="cpu")
    if spec.weights:
        from ..io import sha256_file

        _load_weights(model, spec.weights)
        weights_sha = sha256_file(spec.weights)
    if cfg is not None and pretrained:
        raise InputError(f"{spec.model}: a model config file has no pretrained tags; use --pretrained none or --weights FILE")
    return model.eval(), name, cfg, pretrained, weights_sha


def _load_weights(model, path) -> None:
    """Load a full-CLIP or image-tower-only state dict into ``model``; refuse missing tower keys."""
    sd = load_state_dict_file(path)
    if not any(k.startswith("visual.") for k in sd) and any(k.startswith(("conv1.", "trunk.", "stem.")) for k in sd):
        sd = {f"visual.{k}": v for k, v in sd.items()}
    result = load_state(model, sd, path, "this OpenCLIP model")
    missing = [k for k in result.missing_keys if k.startswith("visual.")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise InputError(f"{path}: weights do not fit this OpenCLIP model (e.g. {'missing' if missing else 'unexpected'} {bad})")


class Embedder:
    """Images -> L2-normalised OpenCLIP image embeddings.

    Args:
        spec (`EmbedderSpec`): model, pretrained tag or ``None``, weights file.
        device (`str`, defaults to ``"cpu"``): where the image tower runs.
    """

    def __init__(self, spec: EmbedderSpec, device: str = "cpu"):
        import torch

        model, name, cfg, pretrained, weights_sha = _build_clip(spec)
        self.visual = model.visual.to(device)
        self.device = torch.device(device)
        del model
        pp = getattr(self.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(self.visual, "image_size", 224))
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = np.asarray(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)), np.float32)
        self.std = np.asarray(pp.get("std", (0.26862954, 0.26130258, 0.27577711)), np.float32)
        with torch.no_grad():
            dim = int(self.visual(torch.zeros(1, 3, self.size, self.size, device=self.device)).shape[-1])
        weights_path = str(Path(spec.weights).absolute()) if spec.weights else None
        self.identity = EmbedderIdentity(name, pretrained, weights_sha, dim, cfg, weights_path)

    @staticmethod
    def spec_for(identity: EmbedderIdentity, weights: str | None = None) -> EmbedderSpec:
        """The spec that rebuilds the embedder an index records (``weights`` overrides its path)."""
        return EmbedderSpec(identity.model, identity.pretrained, weights or identity.weights_path, identity.model_cfg)

    @property
    def dim(self) -> int:
        return self.identity.dim

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 [0, 1] -> (3, S, S) float32, normalised: resize the short side
        to S (area when shrinking, bicubic when enlarging), centre crop, mean/std."""
        import cv2

        h, w = rgb.shape[:2]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        img = cv2.resize(rgb, (nw, nh), interpolation=interp)
        y, x = (nh - self.size) // 2, (nw - self.size) // 2
        img = np.clip(img[y:y + self.size, x:x + self.size], 0, 1)
        return ((img - self.mean) / self.std).transpose(2, 0, 1).astype(np.float32)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, H, W, 3) float32 [0, 1] images (sizes may differ) -> (N, dim) float32, unit norm."""
        import torch

        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = torch.from_numpy(np.stack([self.preprocess(im) for im in images])).to(self.device)
        with torch.no_grad():
            feats = self.visual(batch).float()
        feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu().numpy().astype(np.float32)


def embed_files(
    embedder: Embedder, paths: Sequence[Path], batch_size: int = 64, workers: int = 2, desc: str = "embedding",
) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, int]]]]:
    """Embed image files in batches: yields ``(positions, vectors (B, dim), sizes [(w, h)])``.

    Decoding runs on ``workers`` threads (OpenCV releases the GIL). An unreadable file
    raises :class:`InputError` naming it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..io import read_rgb
    from ..progress import progress

    def load(p):
        return read_rgb(p)

    bar = progress(total=len(paths), desc=desc, unit="img")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            pos = list(range(start, min(start + batch_size, len(paths))))
            images = list(pool.map(load, [paths[i] for i in pos]))
            sizes = [(im.shape[1], im.shape[0]) for im in images]
            yield pos, embedder.embed(images), sizes
            bar.update(len(pos))
    bar.close()
