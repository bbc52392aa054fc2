"""LPIPS, CLIP-IQA and FID: loaders that check for their weights first, and the math.

No weights are ever downloaded here. Each loader looks for the files the upstream package
would download (torch hub cache, ``~/.cache/clip``) *before* building anything, and raises
:class:`refsr.errors.MissingWeightsError` naming the missing file, where to put it and
where to get it. Tests build the same modules with random weights and pass them in.

- LPIPS (Zhang et al. 2018) from the ``lpips`` package, v0.1: its linear layers ship
  inside the package; the AlexNet/VGG16 trunk is torchvision's ImageNet checkpoint. This
  is the one LPIPS loader of refsr (``evaluate`` and the autoencoder's perceptual loss).
- CLIP-IQA (Wang et al. 2023) from ``piq.CLIPIQA`` (CLIP RN50, "Good photo." vs
  "Bad photo." anchors), built from ``~/.cache/clip/RN50.pt`` (TorchScript) and
  ``~/.cache/clip/clipiqa_tokens.pt``.

Every checkpoint is read by us with ``torch.load(weights_only=True)`` (:func:`refsr.io.read_weights`),
including those the packages would load themselves (lpips' linear layers, piq's tokens), and
handed over as tensors; a file that cannot be read that way raises
:class:`refsr.errors.BadWeightsError` naming it.
- FID (Heusel et al. 2017) on the 2048-d pool features of ``piq``'s FID Inception
  (the TF Inception weights of pytorch-fid), with our own Fréchet distance.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from ..errors import BadWeightsError, MissingWeightsError
from ..io import hub_checkpoint, read_weights

LPIPS_NETS = ("alex", "vgg")
# torchvision ImageNet checkpoints the lpips trunks come from (torch hub cache names).
LPIPS_BACKBONES = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
FID_INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
CLIPIQA_MODEL_URL = "https://github.com/photosynthesis-team/piq/releases/download/v0.7.1/RN50.pt"
CLIPIQA_TOKENS_URL = "https://github.com/photosynthesis-team/piq/releases/download/v0.7.1/clipiqa_tokens.pt"
FID_MIN_IMAGES = 50


# ---------------------------------------------------------------------------------------
# Finding weights files
# ---------------------------------------------------------------------------------------


def clip_cache_dir() -> Path:
    """The folder piq's CLIP-IQA reads its files from (``~/.cache/clip``)."""
    return Path(os.path.expanduser("~/.cache/clip"))


def require_weights(path: Path, what: str, url: str) -> Path:
    """Return ``path`` if it is a file, else raise one line saying how to supply it.

    Raises:
        MissingWeightsError: naming ``what``, the missing file and the download URL.
    """
    if path.is_file():
        return path
    raise MissingWeightsError(
        f"{what} weights not found: {path} is missing (no download is attempted); "
        f"fetch {url} on a machine with network access and copy it to {path}"
    )


# ---------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------


def _check_lpips_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}; got {net!r}")


def _copy_trunk(trunk, state: dict, net: str) -> None:
    """Copy torchvision ``features.N.*`` tensors into lpips' ``sliceK.N.*`` parameters."""
    import torch

    with torch.no_grad():
        for name, param in trunk.named_parameters():
            _, index, kind = name.split(".")
            key = f"features.{index}.{kind}"
            if not isinstance(state, dict) or key not in state or tuple(state[key].shape) != tuple(param.shape):
                raise BadWeightsError(f"LPIPS ({net} trunk) weights lack {key} with shape {tuple(param.shape)}: "
                                      f"not torchvision's {net} checkpoint ({hub_checkpoint(LPIPS_BACKBONES[net])})")
            param.copy_(state[key])


def lpips_linear_weights(net: str) -> Path:
    """The v0.1 linear-layer weights that ship inside the ``lpips`` package."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"


def build_lpips(net: str = "alex", trunk_state: dict | None = None):
    """An ``lpips.LPIPS`` v0.1 model with the package's linear layers and a given trunk.

    The linear layers are read by :func:`refsr.io.read_weights` (lpips' own loading would
    unpickle them); nothing is downloaded.

    Args:
        net (`str`, defaults to ``"alex"``): ``"alex"`` or ``"vgg"``.
        trunk_state (`dict` or `None`): a torchvision AlexNet/VGG16 state dict; ``None``
            leaves the trunk randomly initialised (for tests only: not a metric).

    Raises:
        BadWeightsError: an unreadable linear-layer file or trunk checkpoint.
    """
    import lpips

    _check_lpips_net(net)
    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" from lpips
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    linear, what = lpips_linear_weights(net), f"LPIPS ({net} linear layers)"
    state = read_weights(linear, what, error=BadWeightsError)
    needed = [k for k in model.state_dict() if re.match(r"lin\d\.", k)]  # ``lins.N`` are the same layers
    if not isinstance(state, dict) or any(k not in state or state[k].shape != model.state_dict()[k].shape for k in needed):
        raise BadWeightsError(f"{what} weights {linear}: not lpips' v0.1 {net} linear layers")
    model.load_state_dict({k: state[k] for k in needed}, strict=False)
    if trunk_state is not None:
        _copy_trunk(model.net, trunk_state, net)
    return model.eval().requires_grad_(False)


def load_lpips(net: str = "alex", device="cpu"):
    """LPIPS with its real weights, from the torch hub cache only: the one LPIPS loader
    (``evaluate``, and the autoencoder's perceptual loss with ``net="vgg"``).

    Raises:
        MissingWeightsError: the trunk checkpoint (e.g. ``alexnet-owt-7be5be79.pth``) is
            not in ``<torch hub dir>/checkpoints``. BadWeightsError: it is there but unreadable.
    """
    _check_lpips_net(net)
    what = f"LPIPS ({net} trunk)"
    path = require_weights(hub_checkpoint(LPIPS_BACKBONES[net]), what, LPIPS_BACKBONES[net])
    return build_lpips(net, read_weights(path, what, error=BadWeightsError)).to(device)


def lpips_distance(model, pred, gt):
    """LPIPS per image pair.

    Args:
        model: an ``lpips.LPIPS``.
        pred, gt (`torch.Tensor`): (B, 3, H, W) float in [0, 1] (mapped to [-1, 1] here).

    Returns:
        (B,) float64, 0 for identical images.
    """
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        d = model(pred.float().to(device) * 2 - 1, gt.float().to(device) * 2 - 1)
    return d.view(-1).double().cpu()


# ---------------------------------------------------------------------------------------
# CLIP-IQA
# ---------------------------------------------------------------------------------------


def load_clipiqa(device="cpu"):
    """``piq.CLIPIQA`` (data range 1) from the files piq caches in ``~/.cache/clip``, read by
    us: the CLIP RN50 TorchScript archive with ``torch.jit.load`` (no Python unpickling) and
    the prompt tokens with :func:`refsr.io.read_weights`, handed to piq's constructor in place of
    its own loaders (which would download, and unpickle the tokens).

    Raises:
        MissingWeightsError: ``RN50.pt`` or ``clipiqa_tokens.pt`` is missing there.
        BadWeightsError: one of them is there but unreadable.
    """
    from unittest import mock

    import piq
    import piq.clip_iqa
    import torch
    from piq.feature_extractors import clip as piq_clip

    model_path = require_weights(clip_cache_dir() / "RN50.pt", "CLIP-IQA (CLIP RN50)", CLIPIQA_MODEL_URL)
    tokens_path = require_weights(clip_cache_dir() / "clipiqa_tokens.pt", "CLIP-IQA (prompt tokens)", CLIPIQA_TOKENS_URL)
    tokens = read_weights(tokens_path, "CLIP-IQA (prompt tokens)", error=BadWeightsError)
    if not torch.is_tensor(tokens) or tokens.dtype not in (torch.int32, torch.int64) or tokens.dim() != 2:
        raise BadWeightsError(f"CLIP-IQA (prompt tokens) weights {tokens_path}: expected a 2-d integer tensor of tokens")
    try:
        with open(model_path, "rb") as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated")  # a FutureWarning, or a DeprecationWarning (torch 2.11)
            clip = piq_clip.build_model(torch.jit.load(f, map_location="cpu").state_dict()).float().eval()
    except Exception as e:
        raise BadWeightsError(f"CLIP-IQA (CLIP RN50) weights {model_path} cannot be read as piq's TorchScript CLIP "
                              f"({type(e).__name__})") from None
    with mock.patch.object(piq.clip_iqa.clip, "load", lambda: clip), \
            mock.patch.object(piq.clip_iqa, "download_tensor", lambda *a, **k: tokens):
        return piq.CLIPIQA(data_range=1.0).to(device).eval()


def clipiqa_score(model, images):
    """CLIP-IQA per image: (B, 3, H, W) float in [0, 1] -> (B,) float64 in [0, 1]."""
    import torch

    device = model.anchors.device
    with torch.no_grad():
        return model(images.float().to(device)).view(-1).double().cpu()


# ---------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------


def build_fid_inception(state_dict: dict | None = None):
    """piq's ``InceptionV3`` feature extractor (final 2048-d pool, input resized to 299).

    Args:
        state_dict (`dict` or `None`): pytorch-fid's ``pt_inception-2015-12-05`` weights;
            ``None`` leaves the network randomly initialised (tests only).
    """
    from piq.feature_extractors import fid_inception as fi
    from torchvision import models

    net = models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    for name, block in [("Mixed_5b", fi.FIDInceptionA(192, pool_features=32)), ("Mixed_5c", fi.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", fi.FIDInceptionA(288, pool_features=64)), ("Mixed_6b", fi.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", fi.FIDInceptionC(768, channels_7x7=160)), ("Mixed_6d", fi.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", fi.FIDInceptionC(768, channels_7x7=192)), ("Mixed_7b", fi.FIDInceptionE1(1280)),
                        ("Mixed_7c", fi.FIDInceptionE2(2048))]:  # the TF FID Inception's blocks, as piq builds it
        setattr(net, name, block)
    if state_dict is not None:
        net.load_state_dict(state_dict)

    class _Inception(fi.InceptionV3):
        fid_inception_v3 = staticmethod(lambda: net)  # piq's own builder would download

    return _Inception(output_blocks=[3], resize_input=True, normalize_input=True).eval()


def load_fid_inception(device="cpu"):
    """The FID Inception with its real weights, from the torch hub cache only.

    Raises:
        MissingWeightsError: ``pt_inception-2015-12-05-6726825d.pth`` is not in
            ``<torch hub dir>/checkpoints``. BadWeightsError: it is there but unreadable.
    """
    path = require_weights(hub_checkpoint(FID_INCEPTION_URL), "FID (Inception)", FID_INCEPTION_URL)
    state = read_weights(path, "FID (Inception)", error=BadWeightsError)
    try:
        return build_fid_inception(state).to(device)
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        raise BadWeightsError(f"FID (Inception) weights {path} do not fit the network "
                              f"({str(e).strip().splitlines()[0][:120]})") from None


def inception_features(model, images):
    """(B, 3, H, W) float in [0, 1] -> (B, D) float64 features (D = 2048 for Inception).

    ``model`` is any module returning a list whose first item is (B, D, ...) features.
    """
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        feats = model(images.float().to(device).clamp(0, 1))[0]
    return feats.reshape(feats.shape[0], -1).double().cpu()


def feature_statistics(features):
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64 (N >= 2)."""
    x = features.double()
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix):
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    import torch

    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    1. Tr (sigma1 sigma2)^(1/2) equals Tr (s sigma2 s)^(1/2) with s = sigma1^(1/2), because
       sigma1 sigma2 is similar to s sigma2 s; the latter is symmetric PSD, so its root
       comes from a stable symmetric eigen-decomposition (no complex parts to discard).
    2. Sum the three terms in float64.

    Args:
        mu1, mu2 (`torch.Tensor`): (D,) means. sigma1, sigma2: (D, D) covariances.
    """
    import torch

    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    s = _psd_sqrt(sigma1)
    inner = s @ sigma2 @ s
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(pred_features, gt_features) -> float:
    """FID between two (N, D) feature sets (each N >= 2), float.

    With fewer images than feature dimensions (the usual case: 2048-d Inception features)
    the covariances have low rank, and the expensive (D, D) square root is avoided
    exactly: with centred features A1 (N1, D), A2 (N2, D), sigma_i = A_i^T A_i / (N_i - 1),
    the nonzero eigenvalues of sigma1 sigma2 are those of M M^T with
    M = A1 A2^T / sqrt((N1 - 1)(N2 - 1)), so Tr (sigma1 sigma2)^(1/2) is the sum of the
    singular values of M (an N1 x N2 matrix).
    """
    import torch

    x, y = pred_features.double(), gt_features.double()
    n1, n2, d = x.shape[0], y.shape[0], x.shape[1]
    if min(n1, n2) >= d:
        mu1, s1 = feature_statistics(x)
        mu2, s2 = feature_statistics(y)
        return frechet_distance(mu1, s1, mu2, s2)
    if min(n1, n2) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {n1} and {n2}")
    mu1, mu2 = x.mean(dim=0), y.mean(dim=0)
    a1, a2 = x - mu1, y - mu2
    tr1, tr2 = (a1 * a1).sum() / (n1 - 1), (a2 * a2).sum() / (n2 - 1)
    tr_covmean = torch.linalg.svdvals(a1 @ a2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)
