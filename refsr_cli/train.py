"""`refsr train`: train the VQ autoencoder or the diffusion denoiser (one device or many)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .common import device_option, report, seed_option, workers_option
from .train_matcher import matcher_options, run_matcher_stage

STAGES = ("autoencoder", "diffusion", "matcher")
PREDICTION_TYPES = ("epsilon", "v_prediction")  # refsr.models.ldm.PREDICTION_TYPES (kept light for --help)


def _build_autoencoder(o: dict):
    from refsr.train.autoencoder import AutoencoderStage

    return AutoencoderStage(o["data"], config=o["config"], seed=o["seed"], lpips=not o["no_lpips"],
                            holdout=o["holdout"], val=o["val"], val_images=o["val_images"], init_from=o["init_from"],
                            decoder_only=o["decoder_only"], decode=o["decode"])


def _build_diffusion(o: dict):
    from refsr.train.diffusion import DiffusionStage

    return DiffusionStage(o["data"], config=o["config"], kind=o["kind"], vqvae=o["vqvae"], matches=o["matches"],
                          init_from=o["init_from"], seed=o["seed"], max_refs=o["max_refs"],
                          ref_dropout=o["ref_dropout"], degrade_on_the_fly=o["degrade_on_the_fly"],
                          prediction_type=o["prediction_type"], min_snr_gamma=o["min_snr_gamma"])


# stage name -> builder(options) -> refsr.train.loop.Stage; a new stage is one entry here
STAGE_BUILDERS = {"autoencoder": _build_autoencoder, "diffusion": _build_diffusion}


def _check_stage_options(o: dict) -> None:
    if o["stage"] == "diffusion":
        if o["data"].suffix.lower() != ".jsonl":
            raise click.BadParameter("the diffusion stage reads a pair manifest (.jsonl)", param_hint="--data")
        if o["vqvae"] is None and o["init_from"] is None:
            raise click.BadParameter("the diffusion stage needs a trained VQ autoencoder (--vqvae DIR) "
                                     "or a pretrained LDM-SR folder (--init-from DIR)", param_hint="--vqvae")


@click.command("train")
@click.option("--stage", type=click.Choice(STAGES), required=True, help="What to train.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pair manifest (pairs/manifest.jsonl); the autoencoder and the matcher also take a folder of images "
              "or a .txt list of image paths (relative to the list).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (checkpoints/, metrics.jsonl, validation/, model/).")
@click.option("--config", default="small", show_default=True, help="Model config: tiny, small, paper or a JSON/YAML file.")
@click.option("--kind", type=click.Choice(["ldm", "ldm-ca"]), default="ldm-ca", show_default=True,
              help="diffusion: ldm (LDM-SR baseline) or ldm-ca (with the reference branch).")
@click.option("--vqvae", type=click.Path(exists=True, path_type=Path), default=None,
              help="diffusion: the frozen VQ autoencoder (an autoencoder run, a model folder or a VQModel folder).")
@click.option("--matches", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="diffusion: matches.jsonl from `refsr match` (the references).")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="diffusion: start from a diffusers LDM-SR or refsr model folder (its unet/ and "
              "vqvae/). autoencoder: start from a trained VQ (an autoencoder run, a model folder or a VQModel folder).")
@click.option("--decoder-only", is_flag=True, help="autoencoder: train only the decoder (with --init-from): the "
              "encoder and codebook stay frozen, so the latents, and a denoiser trained on them, stay valid.")
@click.option("--decode", type=click.Choice(["quantized", "continuous"]), default="quantized", show_default=True,
              help="autoencoder: train the decoder on the codebook vectors (LDM-SR) or on the encoder's continuous "
              "latents. The export records whichever decodes the held-out images better.")
@click.option("--max-refs", type=click.IntRange(min=0), default=None, help="diffusion: references per sample (default: config).")
@click.option("--ref-dropout", type=click.FloatRange(0, 1), default=None,
              help="diffusion: probability of training a sample without references (default: config).")
@click.option("--degrade-on-the-fly", is_flag=True, help="diffusion: make LR from HR with refsr.degrade's torch path "
              "(Real-ESRGAN preset) instead of the manifest's LR images.")
@click.option("--prediction-type", type=click.Choice(PREDICTION_TYPES), default=None,
              help="diffusion: what the U-Net predicts: epsilon (LDM-SR) or v_prediction (the SD x4 upscaler); "
              "recorded in the model's scheduler config (default: config, epsilon).")
@click.option("--min-snr-gamma", type=click.FloatRange(min=0), default=None,
              help="diffusion: min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their value), 0 = off "
              "(default: config, 0); recorded in refsr.json.")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="autoencoder, matcher: fraction of the images (by image) held out of training for the "
              "evaluation in RUN/eval.json.")
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None,
              help="autoencoder: held-out images (folder or pair manifest) instead of --holdout.")
@click.option("--val-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="autoencoder: at most this many held-out images are evaluated (centred squares of up to 256 px).")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Per device (default: config).")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: config).")
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default=None, help="After warmup (default: config).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Warmup optimizer steps (default: config).")
@click.option("--ema-decay", type=click.FloatRange(0, 1), default=None, help="EMA decay (default: config).")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=None, help="Max gradient norm, 0 = off (default: config).")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--validate-every", type=click.IntRange(min=0), default=None,
              help="Validation grid (and the held-out evaluation, logged in metrics.jsonl) every N steps, 0 = off.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--max-minutes", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Wall-clock cap: stop after this many minutes (checkpoint and export as at the end); "
                   "0 = no cap. Gives runs the same time budget (e.g. LDM vs LDM+CA).")
@click.option("--resume", is_flag=True, help="Continue from the run's latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete the run's checkpoints and outputs and start again.")
@click.option("--no-lpips", is_flag=True, help="autoencoder: no LPIPS perceptual loss.")
@seed_option
@device_option
@workers_option
@matcher_options
def train(**o):
    """Train the VQ autoencoder or the diffusion denoiser into a run folder.

    Reads HR crops (autoencoder: a folder of images or a pair manifest) or HR/LR pairs with
    their matched references (diffusion: pair manifest + matches.jsonl + a frozen VQ).
    Writes RUN/checkpoints/step-N/ (safetensors, last K kept), RUN/metrics.jsonl,
    RUN/validation/step-N.png (LR | sample | HR) and, at the end, RUN/model/: the model
    folder (EMA weights) that `refsr sample --model` loads.

    Plain `refsr train` uses one device. Data-parallel on N GPUs (or CPU processes):
    `accelerate launch --num_processes N -m refsr_cli train ...`. --steps counts optimizer
    steps, so a run has the same length on 1 or N devices; the global batch
    (per-device batch x processes x accumulation) is printed at start.

    \b
    Examples:
      refsr train --stage autoencoder --data photos/ --config small --steps 20000 -o runs/vq
      refsr train --stage diffusion --data pairs/manifest.jsonl --matches matches.jsonl \\
          --vqvae runs/vq --kind ldm-ca --config small --steps 50000 -o runs/ldm-ca
      accelerate launch --num_processes 8 -m refsr_cli train --stage diffusion \\
          --data pairs/manifest.jsonl --matches matches.jsonl --init-from ldm-sr-4x/ \\
          --config paper --mixed-precision bf16 -o runs/paper
      refsr train ... -o runs/ldm-ca --resume           # continue after an interruption
    """
    from refsr.models import load_config
    from refsr.train import TrainOptions, checkpoint_dirs, run_training

    if o["stage"] == "matcher":
        return run_matcher_stage(o)
    _check_stage_options(o)
    defaults = load_config(o["config"])["train"]
    pick = lambda key, cfg_key: defaults[cfg_key] if o[key] is None else o[key]  # noqa: E731
    stage = STAGE_BUILDERS[o["stage"]](o)
    opts = TrainOptions(
        output=o["output"], steps=o["steps"], batch_size=pick("batch_size", "batch_size"), lr=pick("lr", "lr"),
        seed=o["seed"], device=o["device"], resume=o["resume"], overwrite=o["overwrite"],
        checkpoint_every=o["checkpoint_every"], keep_checkpoints=o["keep_checkpoints"],
        mixed_precision=o["mixed_precision"], grad_accum=o["grad_accum"], grad_clip=pick("grad_clip", "grad_clip"),
        ema_decay=pick("ema_decay", "ema_decay"), warmup_steps=pick("warmup", "warmup_steps"),
        lr_schedule=pick("lr_schedule", "lr_schedule"), validate_every=pick("validate_every", "validate_every"),
        log_every=o["log_every"], workers=o["workers"] or 0, max_minutes=o["max_minutes"],
    )
    out = run_training(stage, opts)
    if int(os.environ.get("RANK", "0")) == 0:
        done = int(checkpoint_dirs(opts.output)[-1].name.split("-")[1])
        report(f"trained {o['stage']} for {done} steps{'' if done == opts.steps else f' of {opts.steps} (time cap)'}: {out}")
        if (opts.output / "eval.json").is_file() and o["stage"] == "autoencoder":
            report(format_autoencoder_eval(opts.output / "eval.json"))


def format_autoencoder_eval(path: Path) -> str:
    """The held-out reconstruction line of an autoencoder run's eval.json."""
    from refsr.io import read_json

    ev = read_json(path)
    q, c = ev["quantized"], ev["continuous"]
    return (f"held-out reconstruction ({ev['images']} images, Y, border {ev['border']}): "
            f"quantised {q['psnr']:.2f} dB / SSIM {q['ssim']:.4f}, continuous {c['psnr']:.2f} dB / SSIM {c['ssim']:.4f} "
            f"({path})")
