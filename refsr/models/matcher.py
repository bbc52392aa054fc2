"""The stage-2 patch matcher of reference retrieval (``refsr match``), as a diffusers model.

:class:`MatcherNet` maps images to feature maps: a torchvision ResNet cut after
``layer{depth}`` (:class:`ResNetTrunk`), then, for a trained matcher, a per-cell projection
head (two 1x1 convolutions, trained by ``refsr train matcher``). Because the head
acts on every cell, ``match`` pools the projected map over a window exactly as training
pools it over a patch. :func:`load_matcher` is the one place a matcher spec (``shipped``,
``imagenet``, ``none`` or a folder) is turned into a network.

Folders:

- written by :meth:`MatcherNet.save_pretrained` (diffusers): ``config.json``
  (``_class_name: "MatcherNet"``, ``_diffusers_version``, ``arch``, ``depth``, ``head_dim``)
  + ``diffusion_pytorch_model.safetensors``;
- ``refsr.matcher/1`` (written before, e.g. the shipped ``refsr/weights/matcher``):
  ``config.json`` (``format: "refsr.matcher/1"``, ``_class_name`` ``MatcherNet`` or
  ``ResNetTrunk``, ``arch``, ``depth``, ``head_dim``, ``weights_dtype``) + ``model.safetensors``;
  read by :meth:`MatcherNet.from_pretrained` as well, as is a bare trunk ``.safetensors`` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..constants import EXPORT_DTYPES
from ..errors import BadWeightsError, InputError, MissingWeightsError

SHIPPED_MATCHER = Path(__file__).resolve().parents[1] / "weights" / "matcher"  # `--matcher shipped`
MATCHER_SPECS = ("shipped", "imagenet", "none")  # besides a folder
LEGACY_FORMAT = "refsr.matcher/1"
LEGACY_WEIGHTS = "model.safetensors"
RANDOM_INIT_SEED = 0  # `none` builds the same random network in every process
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet cut after ``layer{depth}``: images -> feature maps.

    Args:
        arch (`str`, defaults to ``"resnet34"``): a torchvision ResNet name.
        depth (`int`, defaults to 3): last residual stage kept (1..4); the output stride is
            4 * 2 ** (depth - 1), i.e. 16 for depth 3.

    ``forward``: (B, 3, H, W) float32 RGB in [0, 1] -> (B, C, ceil(H / stride),
    ceil(W / stride)) float32 (C = 256 for resnet34 at depth 3). ImageNet normalisation
    happens inside.

    Raises:
        ValueError: an unknown ``arch`` or a ``depth`` outside 1..4.
    """

    def __init__(self, arch: str = "resnet34", depth: int = 3):
        super().__init__()
        import torchvision

        if depth not in (1, 2, 3, 4):
            raise ValueError(f"depth must be 1, 2, 3 or 4, got {depth!r}")
        if not arch.startswith("resnet") or not hasattr(torchvision.models, arch):
            raise ValueError(f"unknown torchvision ResNet {arch!r}; e.g. resnet18, resnet34, resnet50")
        net = getattr(torchvision.models, arch)(weights=None)  # the whole net: the same draws as torchvision's
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(*[getattr(net, f"layer{i}") for i in range(1, depth + 1)])
        self.channels = [m for m in self.layers.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem((x - self.mean) / self.std))

    def zero_init_residual(self) -> None:
        """Zero the last BatchNorm weight of every residual branch (torchvision's
        ``zero_init_residual``): each block starts as the identity."""
        from torchvision.models.resnet import BasicBlock, Bottleneck

        for m in self.layers.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)


class MatcherNet(ModelMixin, ConfigMixin):
    """ResNet trunk, optionally followed by a 1x1-conv projection head: images -> feature maps.

    Args:
        arch (`str`, defaults to ``"resnet34"``): torchvision ResNet of the trunk.
        depth (`int`, defaults to 3): last residual stage kept (output stride 4 * 2 ** (depth - 1)).
        head_dim (`int` or `None`, defaults to 128): channels of the projection head (C -> C ->
            ``head_dim``, ReLU between); ``None``: no head, the trunk's features (``imagenet``, ``none``).

    ``forward``: (B, 3, H, W) float32 RGB in [0, 1] -> (B, head_dim or C, H / s, W / s)
    float32, s = ``self.stride``.

    Raises:
        ValueError: a bad ``arch``, ``depth`` or ``head_dim``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, arch: str = "resnet34", depth: int = 3, head_dim: int | None = 128):
        super().__init__()
        if head_dim is not None and head_dim < 1:
            raise ValueError(f"head_dim must be None or >= 1, got {head_dim}")
        self.trunk = ResNetTrunk(arch, depth)
        c = self.trunk.channels
        self.head = (nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, head_dim, 1))
                     if head_dim is not None else nn.Identity())

    @property
    def stride(self) -> int:
        """Pixels per feature-map cell."""
        return 4 * 2 ** (self.config.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, P, P) in [0, 1] -> (B, D) L2-normalised mean of the feature map (the
        pooling ``match`` applies to a query or a window)."""
        return nn.functional.normalize(self(x).mean(dim=(2, 3)), dim=1)

    def save_pretrained(self, save_directory, dtype: str | None = None, **kwargs) -> None:
        """diffusers' ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``);
        ``dtype`` (``float16``/``float32``) casts the weights written, not this network.

        Raises:
            ValueError: ``dtype`` not in :data:`EXPORT_DTYPES`.
        """
        if dtype is None:
            return super().save_pretrained(save_directory, **kwargs)
        if dtype not in EXPORT_DTYPES:
            raise ValueError(f"export dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
        import copy

        cast = copy.deepcopy(self)
        nn.Module.to(cast, getattr(torch, dtype))  # nn.Module's: diffusers' .to warns about fp32 modules
        return cast.save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "MatcherNet":
        """diffusers' ``from_pretrained`` for a local folder (float32, eval mode), strict: weights
        that do not fit the config are a one-line :class:`InputError` naming the folder. A
        config with a ``format`` key is the ``refsr.matcher/1`` layout, read as well, as is a
        bare trunk ``.safetensors`` file.

        Raises:
            InputError: not a matcher folder, or weights that do not fit its config.
        """
        from ..io import read_json

        path = Path(pretrained_model_name_or_path)
        if path.suffix == ".safetensors":
            return _load_legacy(path)
        if not (path / cls.config_name).is_file():
            raise InputError(f"{path}: not a matcher folder (no {cls.config_name})")
        if "format" in read_json(path / cls.config_name):
            return _load_legacy(path)
        from diffusers.utils import logging as diffusers_logging

        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its missing-keys warning becomes our error below
        try:
            net, info = super().from_pretrained(path, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as e:  # no weights file; wrong-shaped tensors
            what = "weights do not fit its config" if isinstance(e, ValueError) else "cannot load its weights"
            raise InputError(f"{path}: {what} ({str(e).splitlines()[0][:200]})") from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        if info["missing_keys"] or info["unexpected_keys"]:
            raise InputError(f"{path}: weights do not fit its config (missing {info['missing_keys'][:2]}, "
                             f"unexpected {info['unexpected_keys'][:2]})")
        return net


def _load_legacy(path: Path) -> MatcherNet:
    """A ``refsr.matcher/1`` folder, or a bare ``.safetensors`` trunk (resnet34, depth 3)."""
    from ..io import load_state_dict_file, load_weights_into, read_json

    folder = path if path.is_dir() else path.parent
    weights = path if path.suffix == ".safetensors" else folder / LEGACY_WEIGHTS
    if path.suffix == ".safetensors" and not (folder / "config.json").is_file():
        config = {"_class_name": "ResNetTrunk", "arch": "resnet34", "depth": 3}
    else:
        config = read_json(folder / "config.json")
        if config.get("format") != LEGACY_FORMAT:
            raise InputError(f"{folder / 'config.json'}: not a matcher config (format {config.get('format')!r}, "
                             f"want {LEGACY_FORMAT!r})")
    head_dim = int(config.get("head_dim", 128)) if config.get("_class_name") == "MatcherNet" else None
    net = MatcherNet(config.get("arch", "resnet34"), int(config.get("depth", 3)), head_dim)
    if head_dim is None:  # a trunk alone: its keys lack the "trunk." prefix
        state = {f"trunk.{k}": v for k, v in load_state_dict_file(weights).items()}
        return load_weights_into(net, weights, config, state_dict=state).eval()
    return load_weights_into(net, weights, config).eval()


def _imagenet_state_dict(arch: str) -> dict:
    """torchvision's ImageNet weights for ``arch`` from the torch hub cache (no download),
    with keys renamed for :class:`MatcherNet`'s trunk."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    from ..io import hub_checkpoint

    target = hub_checkpoint(weights.url)
    if not target.is_file():
        raise MissingWeightsError(
            f"ImageNet {arch} weights are not cached: {target} is missing ({weights.url}); copy that file there, "
            "or use --matcher shipped, none (random) or FOLDER (a trained matcher)")
    renamed = {}
    from ..io import read_weights

    for k, v in read_weights(target, f"ImageNet {arch}", error=BadWeightsError).items():
        if k.startswith(("conv1.", "bn1.")):
            renamed["trunk.stem." + ("0" if k.startswith("conv1.") else "1") + k[k.index("."):]] = v
        elif k.startswith("layer"):
            renamed[f"trunk.layers.{int(k[5]) - 1}{k[6:]}"] = v
    return renamed


def load_matcher(spec: str = "shipped", device: str = "cpu", arch: str = "resnet34", depth: int = 3) -> MatcherNet:
    """The stage-2 network for a ``--matcher`` spec, in eval mode on ``device``.

    Args:
        spec (`str`): ``shipped`` (the trained matcher installed with refsr,
            :data:`SHIPPED_MATCHER`), ``imagenet`` (torchvision weights from the torch hub
            cache), ``none`` (random weights, seed 0, zero-initialised residual branches: the
            same network in every process), or a matcher folder / trunk ``.safetensors`` file.
        arch (`str`), depth (`int`): the trunk of ``imagenet`` and ``none`` (a folder has its own).

    Returns:
        A :class:`MatcherNet` mapping (B, 3, H, W) float32 [0, 1] to feature maps; ``stride``
        pixels per cell.

    Raises:
        MissingWeightsError: ``imagenet`` weights not cached. InputError: an unknown spec or a bad folder.
    """
    if spec == "imagenet":
        net = MatcherNet(arch, depth, head_dim=None)
        from ..io import load_weights_into

        keys = net.state_dict()
        state = {k: v for k, v in _imagenet_state_dict(arch).items() if k in keys}
        load_weights_into(net, f"ImageNet {arch} weights", "the trunk", state_dict=state)
    elif spec == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net = MatcherNet(arch, depth, head_dim=None)
        net.trunk.zero_init_residual()
    elif spec == "shipped" or Path(spec).exists():
        net = MatcherNet.from_pretrained(SHIPPED_MATCHER if spec == "shipped" else spec)
    else:
        raise InputError(f"matcher {spec!r}: expected {', '.join(MATCHER_SPECS)}, or a matcher folder/.safetensors "
                         "file that exists")
    return net.eval().to(device)


def fit_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (area) an (H, W, 3) image so its longer side is at most ``max_side``, as
    the matcher's training and evaluation images are."""
    import cv2

    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb
    f = max_side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
