"""Stage ``autoencoder``: the VQ autoencoder on HR crops (VQGAN-style losses).

Loss = L1 + commit_weight x (codebook + commitment) + lpips_weight x LPIPS (when its
weights are available) + disc_weight x hinge generator loss after ``disc_start`` steps
(a PatchGAN discriminator trained in the same backward pass: the generator term sees the
discriminator's weights detached, the discriminator sees the reconstruction detached).

Held-out evaluation (:func:`reconstruction_metrics`): images split off by image
(``holdout``) or given as ``val``, each cut to its centred square of at most
``eval_size`` pixels (a multiple of the VQ factor), encoded and decoded; PSNR and SSIM on
the Y channel with a 4-pixel border, the ``refsr evaluate`` conventions, for decoding
through the quantiser and without it. Logged every ``validate_every`` steps; at the end,
with the EMA weights, written to ``RUN/eval.json``. The export measures the latent standard
deviation on training crops and records the latent scale (1 / std) and the better decoding
in ``model/vqvae/refsr_latent.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.autoencoder import (ENCODER_PARTS, LatentSpec, PatchDiscriminator, build_vqvae, hinge_d_loss, latent_statistics,
                                  vq_downsampling, write_latent_spec)
from ..constants import DECODE_MODES
from ..errors import OptionError
from ..io import image_to_tensor, read_rgb
from ..models.ldm import load_config
from .data import CropDataset, image_paths, split_images
from .loop import Stage, save_grid

log = logging.getLogger("refsr.train")


class AutoencoderModule(nn.Module):
    """VQModel (+ discriminator) with ``forward(batch, generator) -> (loss, logs)``.

    ``batch["hr"]``: (B, 3, P, P) float32 in [-1, 1]; ``batch["step"]``: optimizer step.
    ``decode``: ``"quantized"`` (the decoder sees the codebook vectors, LDM-SR) or
    ``"continuous"`` (it sees the encoder's latent; the codebook losses still pull the
    latents towards the codebook, which keeps them bounded).
    """

    def __init__(self, vqvae, train_cfg: dict, lpips=None, decode: str = "quantized"):
        super().__init__()
        if decode not in DECODE_MODES:
            raise ValueError(f"decode {decode!r} is not one of {', '.join(DECODE_MODES)}")
        self.vqvae, self.cfg, self.decode = vqvae, train_cfg, decode
        self.lpips = [lpips]  # a list keeps it out of parameters() and state_dict()
        self.disc = PatchDiscriminator() if train_cfg["disc_start"] >= 0 else None

    def forward(self, batch: dict, generator=None):
        hr = batch["hr"]
        h = self.vqvae.encode(hr).latents
        if self.decode == "continuous":
            _, commit, _ = self.vqvae.quantize(h)
            rec = self.vqvae.decode(h, force_not_quantize=True).sample
        else:
            rec, commit = self.vqvae.decode(h, return_dict=False)
        l1 = (rec - hr).abs().mean()
        loss = l1 + self.cfg["commit_weight"] * commit.mean()
        logs = {"l1": l1.detach(), "commit": commit.mean().detach()}
        if self.lpips[0] is not None:
            if next(self.lpips[0].parameters()).device != hr.device:
                self.lpips[0].to(hr.device)
            perceptual = self.lpips[0](rec.float(), hr.float()).mean()
            loss = loss + self.cfg["lpips_weight"] * perceptual
            logs["lpips"] = perceptual.detach()
        if self.disc is not None:
            on = float(int(batch.get("step", 0)) >= self.cfg["disc_start"])
            frozen = {n: p.detach() for n, p in self.disc.named_parameters()}
            g_adv = -torch.func.functional_call(self.disc, frozen, (rec,)).mean()
            d_loss = hinge_d_loss(self.disc(hr), self.disc(rec.detach()))
            loss = loss + on * (self.cfg["disc_weight"] * g_adv + d_loss)
            logs.update(g_adv=g_adv.detach(), d_loss=d_loss.detach())
        return loss, logs


EVAL_BORDER = 4
EVAL_FORMAT = "refsr.autoencoder-eval/1"


def centre_crop(rgb: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """The centred square of side ``min(H, W, size)``, rounded down to a multiple of ``multiple``."""
    side = min(rgb.shape[0], rgb.shape[1], size) // multiple * multiple
    if side < multiple:
        raise ValueError(f"an image of {rgb.shape[1]}x{rgb.shape[0]} is smaller than the VQ factor {multiple}")
    y, x = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    return rgb[y : y + side, x : x + side]


@torch.no_grad()
def reconstruction_metrics(vqvae, images: list[np.ndarray], device="cpu", border: int = EVAL_BORDER) -> dict:
    """Mean PSNR/SSIM (Y, ``border``) of the VQ's reconstructions of ``images``.

    Args:
        vqvae (`VQModel`): the autoencoder (evaluated as it is; put it in eval mode first).
        images: (H, W, 3) float32 RGB in [0, 1], sides multiples of the VQ factor.

    Returns:
        ``{"images": n, "quantized": {"psnr", "ssim"}, "continuous": {"psnr", "ssim"}}``:
        decoding through the codebook (LDM-SR) and decoding the continuous latent.
    """
    from ..metrics.fidelity import psnr_ssim

    sums = {"quantized": [0.0, 0.0], "continuous": [0.0, 0.0]}
    for rgb in images:
        x = image_to_tensor(rgb, (-1, 1), device, batch=True)
        h = vqvae.encode(x).latents
        gt = (x + 1) / 2
        for name, skip in (("quantized", False), ("continuous", True)):
            rec = vqvae.decode(h, force_not_quantize=skip).sample.clamp(-1, 1).add(1).div(2)
            p, q = psnr_ssim(rec.float().cpu(), gt.float().cpu(), border=border, color="y")
            sums[name][0] += float(p[0])
            sums[name][1] += float(q[0])
    n = max(len(images), 1)
    return {"images": len(images), **{k: {"psnr": round(v[0] / n, 4), "ssim": round(v[1] / n, 5)} for k, v in sums.items()}}


def perceptual_loss() -> nn.Module:
    """LPIPS-VGG for the perceptual loss, from refsr's one LPIPS loader (never downloads).

    Raises:
        MissingWeightsError: the VGG16 checkpoint is not in the torch hub cache; the message
            says where to put it, or to pass ``--no-lpips``.
    """
    from ..errors import BadWeightsError, MissingWeightsError
    from ..metrics.perceptual import load_lpips

    try:
        return load_lpips("vgg", "cpu")
    except MissingWeightsError as e:
        kind = BadWeightsError if isinstance(e, BadWeightsError) else MissingWeightsError
        raise kind(f"{e}; or pass --no-lpips to train the autoencoder without the perceptual loss") from None


class AutoencoderStage(Stage):
    """Train a ``VQModel`` from a config on crops of a folder of images or a pair manifest.

    ``holdout`` (fraction, by image) or ``val`` (a folder or manifest) gives the held-out
    images of the evaluation (at most ``val_images``, centred squares of ``eval_size``).
    ``init_from`` starts from a trained VQ (an autoencoder run, a model folder or a
    ``VQModel`` folder); ``decoder_only`` freezes the encoder and the codebook, so the
    latents (and any denoiser trained on them) stay valid, and the export keeps the latent
    scale they were normalised with; ``decode`` as :class:`AutoencoderModule`.
    """

    name = "autoencoder"

    def __init__(self, data, config="small", seed: int = 0, patch_size: int | None = None, lpips: bool = True,
                 holdout: float = 0.0, val=None, val_images: int = 64, eval_size: int = 256, init_from=None,
                 decoder_only: bool = False, decode: str = "quantized"):
        self.cfg = load_config(config)
        self.patch = patch_size or self.cfg["patch_size"]
        paths, root = image_paths(data)
        train, held = split_images(paths, root, holdout if val is None else 0.0, seed, salt="autoencoder-split",
                                   require_held_out=False)
        if val is not None:
            held = image_paths(val)[0]
        elif holdout > 0 and not held:
            log.warning("%s: no image fell in the held-out split (%d images, --holdout %g): no held-out evaluation "
                        "(pass --val DIR or a larger --holdout)", data, len(paths), holdout)
        self.data = CropDataset(train, self.patch, seed)
        self.held_out = held[:val_images]
        self.eval_size, self.final_eval = eval_size, None
        self._eval_images = None
        torch.manual_seed(seed)
        if init_from is not None:
            from .diffusion import load_vqvae

            self.vqvae = load_vqvae(init_from).float()
        else:
            self.vqvae = build_vqvae(self.cfg["vqvae"])
        self.kept_scale = None
        if decoder_only:
            if init_from is None:
                raise OptionError("decoder_only", "keeps a trained encoder: it needs a trained autoencoder to start from (--init-from)")
            from .diffusion import vq_latent_spec

            self.kept_scale = vq_latent_spec(init_from).scale  # same latents: same normalisation
            for part in ENCODER_PARTS:
                getattr(self.vqvae, part).requires_grad_(False)
        self.decode = decode
        self.use_lpips = lpips
        self.find_unused_parameters = self.cfg["train"]["disc_start"] >= 0

    def dataset(self):
        return self.data

    def module(self):
        lpips = perceptual_loss() if self.use_lpips and self.cfg["train"]["lpips_weight"] > 0 else None
        module = AutoencoderModule(self.vqvae, self.cfg["train"], lpips, self.decode)
        return module

    def validate(self, module, batch, path: Path) -> None:
        rec = module.vqvae(batch["hr"]).sample.clamp(-1, 1)
        save_grid([batch["hr"], rec], path)

    def evaluate(self, module) -> dict | None:
        """Held-out reconstruction PSNR/SSIM (see :func:`reconstruction_metrics`); None
        without held-out images. The last result is kept in ``final_eval``."""
        if not self.held_out:
            return None
        if self._eval_images is None:
            f = vq_downsampling(module.vqvae)
            self._eval_images = [centre_crop(read_rgb(p), self.eval_size, f) for p in self.held_out]
        device = next(module.vqvae.parameters()).device
        was_training = module.vqvae.training
        module.vqvae.eval()
        result = reconstruction_metrics(module.vqvae, self._eval_images, device)
        module.vqvae.train(was_training)
        self.final_eval = {**result, "crop": self.eval_size, "border": EVAL_BORDER, "color": "y"}
        return self.final_eval

    def latent_spec(self, module, crops: int = 64, batch: int = 16) -> LatentSpec:
        """Scale 1 / std of the latents of ``crops`` training crops (a decoder-only run keeps the
        scale of the VQ it started from: its latents are those, and so is any denoiser trained on
        them); the decoding the held-out evaluation found better, or without held-out images the
        one the decoder was trained on."""
        device = next(module.vqvae.parameters()).device
        items = (self.data[2 * 10**12 + j]["hr"] for j in range(crops))
        batches = (torch.stack([next(items) for _ in range(min(batch, crops - i))]).to(device) for i in range(0, crops, batch))
        was_training = module.vqvae.training
        module.vqvae.eval()
        stats = latent_statistics(module.vqvae, batches)
        module.vqvae.train(was_training)
        quantized = self.decode == "quantized"
        if self.final_eval is not None:
            quantized = self.final_eval["quantized"]["psnr"] >= self.final_eval["continuous"]["psnr"]
        scale = round(1.0 / max(stats["std"], 1e-6), 6) if self.kept_scale is None else self.kept_scale
        extra = {} if self.kept_scale is None else {"scale": "kept from the encoder's folder (decoder-only run)"}
        return LatentSpec(scale=scale, decode_quantized=quantized,
                          stats={**stats, "crops": crops, "patch": self.patch, **extra})

    def export(self, module, folder: Path) -> None:
        from ..io import replace_dir, temp_dir_beside

        spec = self.latent_spec(module)
        tmp = temp_dir_beside(folder)
        module.vqvae.save_pretrained(tmp / "vqvae", safe_serialization=True)
        write_latent_spec(tmp / "vqvae", spec)
        replace_dir(tmp, folder)
        log.info("latent std %.4f -> latent scale %.4f%s; decoding %s the quantiser", spec.stats["std"], spec.scale,
                 "" if self.kept_scale is None else " (kept from the encoder's folder: a decoder-only run)",
                 "through" if spec.decode_quantized else "without")

