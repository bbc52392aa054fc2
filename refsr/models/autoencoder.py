"""The VQ autoencoder (diffusers ``VQModel``, f=4) and the pieces of its training loss.

Images are (B, 3, H, W) float in [-1, 1]; latents (B, C, H/4, W/4) before quantisation.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

log = logging.getLogger("refsr.models")


def build_vqvae(config: dict):
    """A randomly initialised ``VQModel`` from a config dict (its ``__init__`` keywords)."""
    from diffusers import VQModel

    return VQModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def vq_downsampling(vqvae) -> int:
    """The spatial factor f of a ``VQModel`` (4 for LDM's vq-f4)."""
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


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


def load_lpips(device) -> nn.Module | None:
    """The LPIPS (VGG) perceptual loss, or None when its weights are not available offline.

    The reason is logged once; training then uses L1 + codebook losses only.
    """
    try:
        import warnings

        import lpips

        with _quiet_stdout(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="vgg", verbose=False)
    except Exception as e:  # no torchvision VGG weights in the cache, no network
        log.warning("LPIPS perceptual loss unavailable (%s: %s); training with L1 + codebook losses only. "
                    "Put vgg16-397923af.pth in the torch hub cache (~/.cache/torch/hub/checkpoints) to enable it.",
                    type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
        return None
    model.eval().requires_grad_(False)
    return model.to(device)


class _quiet_stdout:
    """Silence prints from third-party constructors (lpips prints on load)."""

    def __enter__(self):
        import contextlib
        import io

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
