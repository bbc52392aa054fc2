#!/usr/bin/env python3
"""The autoencoder ceiling: encode and decode every HR crop of a pair manifest.

Writes OUT/<id>_sr.png, the VQ autoencoder's reconstruction of the ground truth (with the
decoding its ``refsr_latent.json`` chose), so that ``refsr evaluate --pred OUT --gt
MANIFEST`` scores it with the same conventions as every restoration: no diffusion model
can do better than this row. A refsr model folder (model_index.json) decodes as the model
does (its decode_quantized); a VQ or run folder as its refsr_latent.json says.

    python scripts/experiments/ae_reconstruct.py runs/vq/model pairs_test/manifest.jsonl restored/autoencoder
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from refsr import io
from refsr.models.autoencoder import latent_spec_or_default, reconstruct, vq_downsampling
from refsr.train.diffusion import load_vqvae, resolve_vqvae_dir


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vqvae", type=Path, help="an autoencoder run, a model folder or a VQModel folder")
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if (args.vqvae / "model_index.json").is_file():  # a refsr model folder records its decoding itself
        from refsr.models import RefSRModel

        model = RefSRModel.from_pretrained(args.vqvae)
        vq, spec = model.vqvae.float().to(args.device).eval(), model.latent
    else:
        vq = load_vqvae(args.vqvae).to(args.device).eval()
        spec = latent_spec_or_default(resolve_vqvae_dir(args.vqvae))
    f = vq_downsampling(vq)
    for rec in io.read_pair_manifest(args.manifest):
        hr = io.read_rgb(rec["hr_path"])
        h, w = hr.shape[0] // f * f, hr.shape[1] // f * f
        x = io.image_to_tensor(hr[:h, :w], (-1, 1), args.device, batch=True)
        rec_x = reconstruct(vq, x, spec.decode_quantized)
        out = np.array(hr)  # rows/columns beyond a multiple of f stay as the ground truth
        out[:h, :w] = rec_x.add(1).div(2)[0].permute(1, 2, 0).float().cpu().numpy()
        io.write_image(args.out / f"{rec['id']}_sr.png", out)
    print(f"wrote {args.out} ({'quantised' if spec.decode_quantized else 'continuous'} decoding)")


if __name__ == "__main__":
    main()
