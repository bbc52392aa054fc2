#!/usr/bin/env python3
"""Probe (docs/results.md, run 6): fine-tune a model's VQ decoder on the latents its sampler
actually decodes, so the decoder learns E[HR | sampled latent] instead of E[HR | E(HR)].

`refsr sample` decodes the mean of the denoised latents (one DDIM jump per draw), which is a
smoother latent than the encoding of a real photo, while the decoder was trained only on the
latter. Two steps, each resumable by rerunning it:

    python scripts/experiments/sr_decoder.py latents refsr/weights/default \\
        work/ft/pairs_train/manifest.jsonl --matches work/ft/matches_train_lr.jsonl \\
        --every 2 -o work/srdec/latents.pt
    python scripts/experiments/sr_decoder.py train refsr/weights/default work/srdec/latents.pt \\
        work/ft/pairs_train/manifest.jsonl --minutes 35 -o work/srdec/model

``latents`` runs `refsr sample`'s own code (the model's recommended settings, seed 0) on the
pairs and records, per pair, the latent handed to the decoder. ``train`` fine-tunes the
decoder (the encoder, codebook, U-Net and reference branch stay as they are) with an L1 loss
on random 128-px crops, half of each batch decoded from those latents and half from the
encodings of the HR crops (so it still decodes real latents), horizontal flips, AdamW at
``--lr``, EMA 0.995; it writes a model folder (float16, as shipped) with the EMA decoder.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from refsr.io import read_pair_manifest, read_rgb
from refsr.models import RefSRModel
from refsr.models.autoencoder import ENCODER_PARTS


def cmd_latents(args) -> None:
    import refsr.sample.core as core
    import refsr.sample.restore as restore
    from refsr.sample import sample_files

    records = read_pair_manifest(args.manifest)[:: args.every]
    captured, current = {}, {}
    decode, restore_one = core._decode, restore._restore_one

    def capture_decode(model, x, *rest):
        captured[current["id"]] = x[0].detach().to(torch.float16).cpu()
        return decode(model, x, *rest)

    def restore_one_named(model, item, *rest, **kw):
        current["id"] = item.path.stem
        return restore_one(model, item, *rest, **kw)

    core._decode, restore._restore_one = capture_decode, restore_one_named
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sample_files([r["lr_path"] for r in records], args.out.parent / "restored_train", model=args.model,
                 matches=args.matches, seed=0, device="cpu", overwrite=True)
    torch.save({"latents": captured}, args.out)
    print(f"{args.out}: {len(captured)} latents of shape {tuple(next(iter(captured.values())).shape)}")


def _pairs(manifest: Path):
    out = {}
    for r in read_pair_manifest(manifest):
        hr = read_rgb(r["hr_path"]).astype(np.float32)
        out[Path(r["lr_path"]).stem] = torch.from_numpy(hr.transpose(2, 0, 1).copy()) * 2 - 1
    return out


def cmd_train(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = RefSRModel.from_pretrained(args.model).float().eval()
    latents = torch.load(args.latents, weights_only=True)["latents"]
    hr = _pairs(args.manifest)
    sampled = sorted(k for k in latents if k in hr)
    names = sorted(hr)
    vq = model.vqvae
    for n, p in vq.named_parameters():
        p.requires_grad_(n.split(".")[0] not in ENCODER_PARTS)
    trainable = [p for p in vq.parameters() if p.requires_grad]
    ema = copy.deepcopy(vq).requires_grad_(False)
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    f, crop = 4, args.crop
    c = crop // f
    t0, step, log = time.perf_counter(), 0, []

    def batch_of(keys, from_sampled):
        zs, ys = [], []
        for k in keys:
            y = hr[k]
            h, w = y.shape[1] // f, y.shape[2] // f
            i, j = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
            ys.append(y[:, i * f:(i + c) * f, j * f:(j + c) * f])
            zs.append(latents[k][:, i:i + c, j:j + c].float() if from_sampled else None)
        y = torch.stack(ys)
        if not from_sampled:
            with torch.no_grad():
                z = model.encode(y)
        else:
            z = torch.stack(zs)
        if rng.random() < 0.5:
            y, z = y.flip(-1), z.flip(-1)
        return z, y

    while time.perf_counter() - t0 < args.minutes * 60 and step < args.steps:
        half = args.batch_size // 2
        zs, ys = batch_of(rng.choice(sampled, half), True)
        zc, yc = batch_of(rng.choice(names, args.batch_size - half), False)
        z, y = torch.cat([zs, zc]), torch.cat([ys, yc])
        out = model.decode(z)
        loss = (out - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), vq.parameters()):
                pe.lerp_(p, 1 - args.ema)
        step += 1
        log.append(loss.item())
        if step % 25 == 0:
            print(f"step {step}: L1 {np.mean(log[-25:]):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.vqvae = ema
    model.recipe = {**model.recipe, "decoder": f"{model.recipe.get('decoder', '')}; then fine-tuned {step} steps on "
                    f"its sampled latents (scripts/experiments/sr_decoder.py)"}
    model.half().save_pretrained(args.out)
    print(f"wrote {args.out} after {step} steps ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("latents")
    a.add_argument("model")
    a.add_argument("manifest", type=Path)
    a.add_argument("--matches", type=Path)
    a.add_argument("--every", type=int, default=1)
    a.add_argument("-o", "--out", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("model")
    t.add_argument("latents", type=Path)
    t.add_argument("manifest", type=Path)
    t.add_argument("--minutes", type=float, default=35)
    t.add_argument("--steps", type=int, default=100000)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--crop", type=int, default=128)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--ema", type=float, default=0.995)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    {"latents": cmd_latents, "train": cmd_train}[args.cmd](args)


if __name__ == "__main__":
    main()
