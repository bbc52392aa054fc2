"""Stage ``autoencoder``: the VQ autoencoder on HR crops (VQGAN-style losses).

Loss = L1 + commit_weight x (codebook + commitment) + lpips_weight x LPIPS (when its
weights are available) + disc_weight x hinge generator loss after ``disc_start`` steps
(a PatchGAN discriminator trained in the same backward pass: the generator term sees the
discriminator's weights detached, the discriminator sees the reconstruction detached).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..models.autoencoder import PatchDiscriminator, build_vqvae, hinge_d_loss, load_lpips
from ..models.ldm import load_config
from .data import CropDataset
from .loop import Stage, save_grid

log = logging.getLogger("refsr.train")


class AutoencoderModule(nn.Module):
    """VQModel (+ discriminator) with ``forward(batch, generator) -> (loss, logs)``.

    ``batch["hr"]``: (B, 3, P, P) float32 in [-1, 1]; ``batch["step"]``: optimizer step.
    """

    def __init__(self, vqvae, train_cfg: dict, lpips=None):
        super().__init__()
        self.vqvae, self.cfg = vqvae, train_cfg
        self.lpips = [lpips]  # a list keeps it out of parameters() and state_dict()
        self.disc = PatchDiscriminator() if train_cfg["disc_start"] >= 0 else None

    def forward(self, batch: dict, generator=None):
        hr = batch["hr"]
        rec, commit = self.vqvae(hr, return_dict=False)
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


class AutoencoderStage(Stage):
    """Train a ``VQModel`` from a config on crops of a folder of images or a pair manifest."""

    name = "autoencoder"

    def __init__(self, data, config="small", seed: int = 0, patch_size: int | None = None, lpips: bool = True):
        self.cfg = load_config(config)
        self.patch = patch_size or self.cfg["patch_size"]
        self.data = CropDataset(data, self.patch, seed)
        torch.manual_seed(seed)
        self.vqvae = build_vqvae(self.cfg["vqvae"])
        self.use_lpips = lpips
        self.find_unused_parameters = self.cfg["train"]["disc_start"] >= 0

    def dataset(self):
        return self.data

    def module(self):
        lpips = load_lpips("cpu") if self.use_lpips and self.cfg["train"]["lpips_weight"] > 0 else None
        module = AutoencoderModule(self.vqvae, self.cfg["train"], lpips)
        return module

    def validate(self, module, batch, path: Path) -> None:
        rec = module.vqvae(batch["hr"]).sample.clamp(-1, 1)
        save_grid([batch["hr"], rec], path)

    def export(self, module, folder: Path) -> None:
        from ..io import replace_dir, temp_dir_beside

        tmp = temp_dir_beside(folder)
        module.vqvae.save_pretrained(tmp / "vqvae", safe_serialization=True)
        replace_dir(tmp, folder)

