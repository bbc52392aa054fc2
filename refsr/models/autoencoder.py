"""The VQ autoencoder (diffusers ``VQModel``, f=4) and the pieces of its training loss.

Images are (B, 3, H, W) float in [-1, 1]; latents (B, C, H/4, W/4) before quantisation.

Latent settings (:class:`LatentSpec`): the diffusion model sees ``latent_scale x`` the VQ
latent, so that the latents have unit standard deviation (Rombach et al. 2022, Sec. G:
"we rescale the latents by the component-wise standard deviation"; Stable Diffusion's
``scaling_factor``), and the decoder is fed either the quantised latent (LDM-SR) or the
continuous one. An autoencoder run records them in ``vqvae/refsr_latent.json``; a folder
without that file (older refsr folders, diffusers' LDM-SR) has scale 1, quantised decoding.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("refsr.models")

# The parts a decoder-only run (``refsr train autoencoder --decoder-only``) keeps frozen: the
# latents, and any denoiser trained on them, stay valid.
ENCODER_PARTS = ("encoder", "quant_conv", "quantize")


def build_vqvae(config: dict):
    """A randomly initialised ``VQModel`` from a config dict (its ``__init__`` keywords)."""
    from diffusers import VQModel

    return VQModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def vq_downsampling(vqvae) -> int:
    """The spatial factor f of a ``VQModel`` (4 for LDM's vq-f4)."""
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


LATENT_FILE = "refsr_latent.json"
LATENT_FORMAT = "refsr.latent/1"


@dataclass
class LatentSpec:
    """How the diffusion model sees the VQ latents.

    Attributes:
        scale (`float`, defaults to 1): the denoiser works on ``scale x`` the encoder's latent.
        decode_quantized (`bool`, defaults to True): decode through the codebook (LDM-SR) or
            decode the continuous latent (``force_not_quantize``).
        stats (`dict`): what the scale was measured on (informational).
    """

    scale: float = 1.0
    decode_quantized: bool = True
    stats: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"format": LATENT_FORMAT, **asdict(self)}


def read_latent_spec(vq_folder) -> LatentSpec | None:
    """The :class:`LatentSpec` stored beside a ``VQModel`` folder, or None if it has none.

    Raises:
        InputError: a present but unreadable or malformed file, naming it.
    """
    from ..errors import InputError
    from ..io import read_json

    path = Path(vq_folder) / LATENT_FILE
    if not path.is_file():
        return None
    rec = read_json(path)
    try:
        spec = LatentSpec(float(rec["scale"]), bool(rec.get("decode_quantized", True)), dict(rec.get("stats", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: not a latent settings file ({type(e).__name__}: {e})") from None
    if not spec.scale > 0:
        raise InputError(f"{path}: latent scale must be > 0, got {spec.scale}")
    return spec


_SAID_SCALE_1: set[str] = set()


def latent_spec_or_default(vq_folder, owner=None) -> LatentSpec:
    """The :class:`LatentSpec` of ``vq_folder``, or scale 1 with quantised decoding for a folder
    without one (an older refsr folder, diffusers' LDM-SR), said once per ``owner`` folder."""
    spec = read_latent_spec(vq_folder)
    if spec is not None:
        return spec
    key = str(Path(owner or vq_folder).resolve())
    if key not in _SAID_SCALE_1:
        _SAID_SCALE_1.add(key)
        log.info("%s: no latent scale recorded (an older refsr folder or a diffusers LDM-SR folder): "
                 "using scale 1 with quantised decoding", owner or vq_folder)
    return LatentSpec()


def reconstruct(vqvae, images: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """Encode and decode (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) clamped to [-1, 1], decoding
    through the codebook or, with ``quantized=False``, the continuous latent."""
    return vqvae.decode(vqvae.encode(images).latents, force_not_quantize=not quantized).sample.clamp(-1, 1)


def write_latent_spec(vq_folder, spec: LatentSpec) -> None:
    """Write ``vq_folder/refsr_latent.json``."""
    from ..io import write_json

    write_json(Path(vq_folder) / LATENT_FILE, spec.record())


@torch.no_grad()
def latent_statistics(vqvae, batches) -> dict:
    """Mean and standard deviation of the (unquantised) latents of ``batches``.

    Args:
        vqvae (`VQModel`): the encoder.
        batches: an iterable of (B, 3, H, W) float tensors in [-1, 1].

    Returns:
        ``{"std": float (all channels together), "channel_mean": [...], "channel_std": [...],
        "count": number of latent pixels}``.
    """
    total, total_sq, n = None, None, 0
    for images in batches:
        z = vqvae.encode(images).latents.double()
        s, sq = z.sum(dim=(0, 2, 3)), (z * z).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        n += z.shape[0] * z.shape[2] * z.shape[3]
    if not n:
        raise ValueError("no images to measure the latent statistics on")
    mean, second = total / n, total_sq / n
    channel_std = (second - mean * mean).clamp_min(0).sqrt()
    overall = float((second.mean() - mean.mean() ** 2).clamp_min(0).sqrt())
    return {"std": overall, "channel_mean": [round(float(v), 6) for v in mean],
            "channel_std": [round(float(v), 6) for v in channel_std], "count": int(n)}


def init_keywords(cls) -> set[str]:
    """The keyword arguments a diffusers class's ``__init__`` accepts."""
    return {p for p in inspect.signature(cls.__init__).parameters if p != "self"}


class PatchDiscriminator(nn.Module):
    """A small PatchGAN discriminator (VQGAN / pix2pix style): (B, 3, H, W) in [-1, 1] ->
    (B, 1, H/8, W/8) logits."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            mods += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2, True)]
            ch = out
        mods += [nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator (VQGAN, Esser et al. 2021, eq. 4)."""
    return 0.5 * (torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean())
