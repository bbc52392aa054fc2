#!/usr/bin/env python3
"""Give a trained model the decoder of a decoder-only fine-tuning run.

A VQ trained with ``refsr train --stage autoencoder --init-from MODEL --decoder-only`` has
the model's encoder and codebook unchanged, so the model's denoiser still speaks its latent
space; only the decoder (and with ``--decode continuous`` the way latents are decoded)
changed. This writes MODEL's folder with that VQ and its ``refsr_latent.json`` decoding,
keeping the model's own latent scale (the denoiser was trained with it), and stores the
floating-point weights as float16 (they load as float32).

    python scripts/experiments/swap_decoder.py refsr/weights/default work/vq_decoder_ft OUT_MODEL
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from refsr.models import RefSRModel
from refsr.models.autoencoder import ENCODER_PARTS, LatentSpec, latent_spec_or_default
from refsr.train.diffusion import load_vqvae, resolve_vqvae_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("vqvae", type=Path, help="the decoder-only run (or its model/vqvae folder)")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    model = RefSRModel.from_pretrained(args.model)
    vq = load_vqvae(args.vqvae).float()
    old, new = model.vqvae.state_dict(), vq.state_dict()
    frozen = [k for k in old if k.split(".")[0] in ENCODER_PARTS]
    changed = [k for k in frozen if not torch.allclose(old[k].float(), new[k].float(), atol=1e-3)]
    if changed:
        raise SystemExit(f"{args.vqvae}: its encoder differs from {args.model}'s ({changed[0]}...): not a decoder-only run")
    spec = latent_spec_or_default(resolve_vqvae_dir(args.vqvae))
    model.vqvae = vq
    model.latent = LatentSpec(scale=model.latent.scale, decode_quantized=spec.decode_quantized,
                              stats={"decoder_from": str(args.vqvae)})
    model.recipe = {**model.recipe, "decoder": f"decoder-only fine-tuning, {'quantised' if spec.decode_quantized else 'continuous'} decoding"}
    model.half().save_pretrained(args.out)
    print(f"wrote {args.out}: latent scale {model.latent.scale}, "
          f"{'quantised' if spec.decode_quantized else 'continuous'} decoding")


if __name__ == "__main__":
    main()
