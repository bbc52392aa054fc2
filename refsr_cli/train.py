"""`refsr train STAGE DATA -o RUN`: train the VQ autoencoder, the diffusion denoiser or the
patch matcher (one device or many).

Every stage is a subcommand of the ``train`` group taking DATA and ``-o RUN``, the loop
options of :func:`loop_options` (one set, turned into :class:`refsr.train.TrainOptions` by
:func:`train_options` with the stage's declared defaults) and its own options; an option of
another stage is a usage error. Choice lists come from :mod:`refsr.constants`, so `--help`
imports no torch. The old spelling ``refsr train --stage STAGE --data DATA`` still runs,
with a deprecation warning (:func:`legacy_args`).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from refsr.constants import (DECODE_MODES, EXPORT_DTYPES, KINDS, LR_SCHEDULES, MATCHER_TRAIN_DEFAULTS, MIXED_PRECISION,
                             PREDICTION_TYPES)

from .common import StageCommand, device_option, report, seed_option, warn, workers_option

STAGES = ("autoencoder", "diffusion", "matcher")


# ---------------------------------------------------------------------------------------
# The group, and the old spelling
# ---------------------------------------------------------------------------------------


def _levels(ctx, param, value: str | None) -> list[int] | str | None:
    """``"0,1,3"`` -> ``[0, 1, 3]``, ``"all"`` -> ``"all"`` (None when not given)."""
    if value is None:
        return None
    if value.strip().lower() == "all":
        return "all"
    try:
        return [int(v) for v in value.split(",") if v.strip()] or None
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a comma-separated list of integers nor 'all'") from None


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` or ``name=VALUE`` (before any ``--``) from ``args``; its value or None."""
    for i, token in enumerate(args):
        if token == "--":
            break
        if token == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if token.startswith(name + "="):
            del args[i]
            return token.split("=", 1)[1]
    return None


def legacy_args(args: list[str]) -> list[str]:
    """Rewrite ``--stage STAGE ... --data DATA ...`` (the spelling before stages were
    subcommands) as ``STAGE DATA ...``, with a one-line warning on stderr."""
    args = list(args)
    stage = _pop_option(args, "--stage") if args and args[0] not in STAGES else None
    data = _pop_option(args, "--data")
    if stage is None and data is None:
        return args
    name, rest = (stage, args) if stage is not None else (args[0] if args else "STAGE", args[1:])
    old = " ".join(x for x in (stage and f"--stage {stage}", data and "--data DATA") if x)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        warn(f"`refsr train {old}` is deprecated: write `refsr train {name} DATA ...`")
    return [name, *([data] if data is not None else []), *rest]


class TrainGroup(click.Group):
    """``refsr train STAGE DATA ...``; also reads the old ``--stage``/``--data`` spelling."""

    command_class = StageCommand

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, legacy_args(args))


@click.group("train", cls=TrainGroup)
def train():
    """Train one stage of the model into a run folder: autoencoder, diffusion or matcher.

    Every stage reads DATA and writes RUN (-o): RUN/checkpoints/step-N/ (safetensors, last K
    kept), RUN/metrics.jsonl, RUN/validation/step-N.png and, at the end, RUN/model/ (EMA
    weights) and, for the autoencoder and the matcher, RUN/eval.json (held-out evaluation,
    also printed). The loop options (--steps, --batch-size, --lr, --max-minutes, --resume,
    ...) are the same for every stage; `refsr train STAGE --help` lists them with the
    stage's own options and defaults.

    Plain `refsr train` uses one device. Data-parallel on N GPUs (or CPU processes):
    `accelerate launch --num_processes N -m refsr_cli train STAGE ...`. --steps counts
    optimizer steps, so a run has the same length on 1 or N devices; the global batch
    (per-device batch x processes x accumulation) is printed at start.

    \b
    Examples:
      refsr train autoencoder photos/ --config small --steps 20000 -o runs/vq
      refsr train diffusion pairs/manifest.jsonl --matches matches.jsonl \\
          --vqvae runs/vq --kind ldm-ca --config small --steps 50000 -o runs/ldm-ca
      refsr train matcher photos/ --init none --steps 2000 -o runs/matcher
      refsr train diffusion ... -o runs/ldm-ca --resume   # continue after an interruption
    """


# ---------------------------------------------------------------------------------------
# Options every stage shares, and the one way to build TrainOptions from them
# ---------------------------------------------------------------------------------------


def loop_options(defaults: dict | None = None):
    """The training loop's options (every :class:`refsr.train.TrainOptions` field but
    ``output``, under the same names). Those left None take the stage's default in
    :func:`train_options`: ``defaults`` (shown in --help), or the model config's ``train``
    section when ``defaults`` is None."""

    def default(key: str) -> str:
        return f"default: {defaults[key]}" if defaults else "default: config"

    options = [
        click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help=f"Per device ({default('batch_size')})."),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Gradient accumulation steps."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help=f"Peak learning rate ({default('lr')})."),
        click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=None,
                     help=f"After warmup ({default('lr_schedule')})."),
        click.option("--warmup", "warmup_steps", type=click.IntRange(min=0), default=None,
                     help=f"Warmup optimizer steps ({default('warmup_steps')})."),
        click.option("--ema-decay", type=click.FloatRange(0, 1), default=None, help=f"EMA decay ({default('ema_decay')})."),
        click.option("--grad-clip", type=click.FloatRange(min=0), default=None,
                     help=f"Max gradient norm, 0 = off ({default('grad_clip')})."),
        click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), default="no", show_default=True,
                     help="Autocast dtype of the forward pass."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True),
        click.option("--keep-checkpoints", type=click.IntRange(min=1), default=3, show_default=True),
        click.option("--validate-every", type=click.IntRange(min=0), default=None,
                     help=f"Validation grid (and the held-out evaluation, logged in metrics.jsonl) every N steps, "
                     f"0 = off ({default('validate_every')})."),
        click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--max-minutes", type=click.FloatRange(min=0), default=0, show_default=True,
                     help="Wall-clock cap: stop after this many minutes (checkpoint and export as at the end); "
                     "0 = no cap. Gives runs the same time budget (e.g. LDM vs LDM+CA)."),
        click.option("--resume", is_flag=True, help="Continue from the run's latest checkpoint."),
        click.option("--overwrite", is_flag=True, help="Start the run again, deleting only what the run made."),
        seed_option,
        device_option,
        workers_option,
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def train_options(o: dict, defaults: dict):
    """:class:`refsr.train.TrainOptions` from a stage command's parsed options ``o`` (its
    loop options and ``output``); an option left None takes ``defaults[name]``."""
    from dataclasses import fields

    from refsr.train import TrainOptions

    values = {f.name: o[f.name] for f in fields(TrainOptions) if f.name in o}
    return TrainOptions(**{k: defaults[k] if v is None else v for k, v in values.items()})


def data_argument(f):
    return click.argument("data", type=click.Path(exists=True, path_type=Path))(f)


output_option = click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
                             help="Run folder (checkpoints/, metrics.jsonl, validation/, model/).")
config_option = click.option("--config", default="small", show_default=True,
                             help="Model config: tiny, small, paper or a JSON/YAML file (its train section gives "
                             "the loop defaults).")
holdout_option = click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
                              help="Fraction of the images (by image) held out of training for the evaluation in "
                              "RUN/eval.json.")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def report_trained(stage: str, opts, model, detail: str = "") -> None:
    """The result line: steps made (and whether the time cap cut the run), where the model is."""
    from refsr.train import checkpoint_dirs

    done = int(checkpoint_dirs(opts.output)[-1].name.split("-")[1])
    cut = "" if done == opts.steps else f" of {opts.steps} (time cap)"
    report(f"trained {stage} for {done} steps{cut}{detail}: {model}")


# ---------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------


@train.command("autoencoder")
@data_argument
@output_option
@config_option
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Start from a trained VQ (an autoencoder run, a model folder or a VQModel folder).")
@click.option("--decoder-only", is_flag=True, help="Train only the decoder (with --init-from): the encoder and "
              "codebook stay frozen, so the latents, and a denoiser trained on them, stay valid (the export keeps "
              "the latent scale of --init-from).")
@click.option("--decode", type=click.Choice(DECODE_MODES), default="quantized", show_default=True,
              help="Train the decoder on the codebook vectors (LDM-SR) or on the encoder's continuous latents. "
              "The export records whichever decodes the held-out images better.")
@click.option("--no-lpips", is_flag=True, help="No LPIPS perceptual loss.")
@holdout_option
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None,
              help="Held-out images (folder, pair manifest or .txt list) instead of --holdout.")
@click.option("--val-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="At most this many held-out images are evaluated (centred squares of up to 256 px).")
@loop_options()
def autoencoder(**o):
    """Train the VQ autoencoder (diffusers VQModel) on HR crops of DATA.

    DATA: a folder of images, a pair manifest (its HR crops) or a .txt list of image paths
    (relative to the list). Writes RUN/model/vqvae/ (with the latent scale and the better
    decoding in refsr_latent.json) and RUN/eval.json: held-out reconstruction PSNR/SSIM
    (Y channel), quantised and continuous, also printed at the end.

    \b
    Examples:
      refsr train autoencoder photos/ --config small --steps 20000 -o runs/vq
      refsr train autoencoder photos/ --init-from runs/vq --decoder-only --decode continuous \\
          --steps 5000 -o runs/vq-decoder
    """
    from refsr.models import load_config
    from refsr.train import run_training
    from refsr.train.autoencoder import AutoencoderStage

    opts = train_options(o, load_config(o["config"])["train"])
    stage = AutoencoderStage(o["data"], config=o["config"], seed=o["seed"], lpips=not o["no_lpips"],
                             holdout=o["holdout"], val=o["val"], val_images=o["val_images"], init_from=o["init_from"],
                             decoder_only=o["decoder_only"], decode=o["decode"])
    model = run_training(stage, opts)
    if is_main_process():
        report_trained("autoencoder", opts, model)
        if (opts.output / "eval.json").is_file():
            report(format_autoencoder_eval(opts.output / "eval.json"))


@train.command("diffusion")
@data_argument
@output_option
@config_option
@click.option("--kind", type=click.Choice(KINDS), default="ldm-ca", show_default=True,
              help="ldm (the LDM-SR baseline) or ldm-ca (with the reference branch).")
@click.option("--vqvae", type=click.Path(exists=True, path_type=Path), default=None,
              help="The frozen VQ autoencoder (an autoencoder run, a model folder or a VQModel folder).")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Start from a diffusers LDM-SR or refsr model folder (its unet/, vqvae/ and, for "
                   "ldm-ca, its trained ref_branch/).")
@click.option("--matches", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="matches.jsonl from `refsr match` (the references).")
@click.option("--max-refs", type=click.IntRange(min=0), default=None, help="References per sample (default: config).")
@click.option("--ref-dropout", type=click.FloatRange(0, 1), default=None,
              help="Probability of training a sample without references (default: config; 0 with --freeze-unet).")
@click.option("--degrade-on-the-fly", is_flag=True, help="Make LR from HR with refsr.degrade's torch path "
              "(Real-ESRGAN preset) instead of the manifest's LR images.")
@click.option("--prediction-type", type=click.Choice(PREDICTION_TYPES), default=None,
              help="What the U-Net predicts: epsilon (LDM-SR) or v_prediction (the SD x4 upscaler); recorded in "
              "the model's scheduler config (default: config, epsilon).")
@click.option("--min-snr-gamma", type=click.FloatRange(min=0), default=None,
              help="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their value), 0 = off (default: config, 0); "
              "recorded in the model's model_index.json.")
@click.option("--max-strength", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Train only timesteps below S x T, for a model sampled with --start-strength <= S (from the "
              "noised latent of the upsampled LR; fine-tuning spends every step where sampling starts); recorded "
              "as recipe.max_strength, and `refsr sample` refuses a larger --start-strength.")
@click.option("--lr-start-fraction", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Train this fraction of the samples as --start-strength sampling starts: noised from the "
              "latent of the bicubic-upsampled LR instead of the HR's (the target still the HR), at timesteps in "
              "the upper half of the trained range; recorded as recipe.lr_start_fraction.")
@click.option("--pixel-loss-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Add this weight times a pixel loss: the model's estimate of the HR latent at the trained "
              "timestep, decoded by the frozen VQ decoder, against the HR patch, as the mean squared error of the "
              "BT.601 luma (the Y of `refsr evaluate`'s PSNR; the latent loss alone weighs every latent element "
              "equally, whatever the decoder makes of it); recorded as recipe.pixel_loss_weight.")
@click.option("--freeze-unet", is_flag=True,
              help="Train only the reference branch (E_LR, E_Ref, the cross-attention); the U-Net of --init-from "
              "keeps its weights, so the model without references stays exactly that U-Net (kind ldm-ca; "
              "recorded as recipe.frozen_unet; --ref-dropout defaults to 0, as a sample without references "
              "would train nothing).")
@click.option("--ca-levels", callback=_levels, default=None, metavar="I,J,...|all",
              help="Decoder positions with reference cross-attention (0 = the mid block's output, lowest "
              "resolution; one more per up block, the last at full latent resolution; all = every one; "
              "default: config, small 0,1). With --init-from a trained ldm-ca, adds positions to its branch: the new ones start with a "
              "zero output (the model is unchanged until trained) and their attention set to matching (each "
              "position first attends where a reference looks like the LR), its trained ones are kept.")
@click.option("--self-ref-fraction", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Of the samples with references, this fraction gets a view of its own HR crop in place of one "
              "of them (a square around the patch at another scale and position, cut as matched fragments are): "
              "training then rewards copying from a reference that holds the target (as a stereo view or another "
              "photo of the same object does), which matches from other photos never do (kind ldm-ca; recorded "
              "as recipe.self_ref_fraction).")
@loop_options()
def diffusion(**o):
    """Train the diffusion denoiser (kind ldm) or the denoiser with the reference branch
    (kind ldm-ca) on a frozen VQ autoencoder.

    DATA: a pair manifest (pairs/manifest.jsonl from `refsr degrade`); --matches gives the
    references. Writes RUN/model/: the model folder (vqvae/, unet/, ref_branch/,
    scheduler/, model_index.json; EMA weights) that `refsr sample --model` loads.

    \b
    Examples:
      refsr train diffusion pairs/manifest.jsonl --matches matches.jsonl \\
          --vqvae runs/vq --kind ldm-ca --config small --steps 50000 -o runs/ldm-ca
      accelerate launch --num_processes 8 -m refsr_cli train diffusion \\
          pairs/manifest.jsonl --matches matches.jsonl --init-from ldm-sr-4x/ \\
          --config paper --mixed-precision bf16 -o runs/paper
      refsr train diffusion pairs/manifest.jsonl --matches matches.jsonl \\
          --init-from runs/ldm-ca/model --max-strength 0.5 --lr-start-fraction 0.5 \\
          --steps 2000 -o runs/ldm-ca-ft
    """
    from refsr.models import load_config
    from refsr.train import run_training
    from refsr.train.diffusion import DiffusionStage

    if o["data"].suffix.lower() != ".jsonl":
        raise click.BadParameter("the diffusion stage reads a pair manifest (.jsonl)", param_hint="DATA")
    if o["vqvae"] is None and o["init_from"] is None:
        raise click.BadParameter("the diffusion stage needs a trained VQ autoencoder (--vqvae DIR) "
                                 "or a pretrained LDM-SR folder (--init-from DIR)", param_hint="--vqvae")
    opts = train_options(o, load_config(o["config"])["train"])
    stage = DiffusionStage(o["data"], config=o["config"], kind=o["kind"], vqvae=o["vqvae"], matches=o["matches"],
                           init_from=o["init_from"], seed=o["seed"], max_refs=o["max_refs"],
                           ref_dropout=o["ref_dropout"], degrade_on_the_fly=o["degrade_on_the_fly"],
                           prediction_type=o["prediction_type"], min_snr_gamma=o["min_snr_gamma"],
                           max_strength=o["max_strength"], lr_start_fraction=o["lr_start_fraction"],
                           pixel_loss_weight=o["pixel_loss_weight"], freeze_unet=o["freeze_unet"], ca_levels=o["ca_levels"],
                           self_ref_fraction=o["self_ref_fraction"])
    model = run_training(stage, opts)
    if is_main_process():
        report_trained("diffusion", opts, model)


@train.command("matcher")
@data_argument
@output_option
@click.option("--init", default="imagenet", show_default=True,
              help="Start from imagenet (cached torchvision weights), none (random), or a trained matcher: "
              "shipped or a folder (it continues).")
@click.option("--arch", default="resnet34", show_default=True, help="torchvision ResNet of the trunk.")
@click.option("--depth", type=click.IntRange(1, 4), default=3, show_default=True,
              help="Last ResNet stage kept (stride 4*2^(depth-1)); 2 is 8x smaller than 3.")
@click.option("--head-dim", type=click.IntRange(min=1), default=128, show_default=True,
              help="Channels of the projection head.")
@click.option("--patch", type=click.IntRange(min=8), default=96, show_default=True,
              help="Fragment size in pixels (training and evaluation), a multiple of --scale.")
@click.option("--scale", type=click.IntRange(min=1), default=4, show_default=True,
              help="SR factor of the query degradation.")
@click.option("--temperature", type=click.FloatRange(min=1e-4), default=0.07, show_default=True,
              help="InfoNCE temperature.")
@click.option("--max-side", type=click.IntRange(min=0), default=512, show_default=True,
              help="Images are downscaled to this longer side (0 = never).")
@click.option("--export-dtype", type=click.Choice(EXPORT_DTYPES), default="float16", show_default=True,
              help="Dtype of the exported weights.")
@click.option("--eval-queries", type=click.IntRange(min=1), default=2, show_default=True,
              help="Degraded queries per held-out image.")
@holdout_option
@loop_options(MATCHER_TRAIN_DEFAULTS)
def matcher(**o):
    """Train the stage-2 patch matcher of `refsr match` (contrastive, InfoNCE): a ResNet
    trunk + 1x1-conv projection head.

    DATA: a folder of photos (searched recursively), a pair manifest (its HR crops) or a
    .txt list. --holdout of the images (by image) are kept out of training. Positive pair:
    a clean --patch fragment and an overlapping fragment degraded with Real-ESRGAN's model
    (torch path) and upsampled; the other fragments of the batch are negatives. Writes
    RUN/split.json, RUN/model/ (the diffusers MatcherNet folder, for `refsr match --matcher
    RUN/model`) and RUN/eval.json: top-1/top-10 location accuracy on held-out photos of the
    trained matcher vs random weights (vs ImageNet weights when cached), also printed.

    \b
    Examples:
      refsr train matcher photos/ --init none --depth 3 --patch 96 \\
          --steps 2000 --batch-size 32 -o runs/matcher
      refsr match pairs/manifest.jsonl --index refs.index/ --matcher runs/matcher/model -o m.jsonl
    """
    from refsr.train.matcher import train_matcher

    if o["patch"] % o["scale"]:
        raise click.BadParameter(f"{o['patch']} is not a multiple of --scale {o['scale']}", param_hint="--patch")
    opts = train_options(o, MATCHER_TRAIN_DEFAULTS)
    result = train_matcher(o["data"], opts, init=o["init"], arch=o["arch"], depth=o["depth"], head_dim=o["head_dim"],
                           patch=o["patch"], scale=o["scale"], temperature=o["temperature"], holdout=o["holdout"],
                           max_side=o["max_side"] or None, export_dtype=o["export_dtype"], eval_queries=o["eval_queries"])
    if is_main_process():
        report_trained("matcher", opts, result["model"], f" on {result['train_images']} images")
        for line in format_matcher_eval(result["eval"]) if result["eval"] else []:
            report(line)


# ---------------------------------------------------------------------------------------
# Result lines
# ---------------------------------------------------------------------------------------


def format_autoencoder_eval(path: Path) -> str:
    """The held-out reconstruction line of an autoencoder run's eval.json."""
    from refsr.io import read_json

    ev = read_json(path)
    q, c = ev["quantized"], ev["continuous"]
    return (f"held-out reconstruction ({ev['images']} images, Y, border {ev['border']}): "
            f"quantised {q['psnr']:.2f} dB / SSIM {q['ssim']:.4f}, continuous {c['psnr']:.2f} dB / SSIM {c['ssim']:.4f} "
            f"({path})")


def format_matcher_eval(ev: dict) -> list[str]:
    """One line per matcher of a matcher run's ``eval.json`` ``eval``."""
    p = ev.get("protocol", {})
    lines = [f"held-out location accuracy ({p.get('images')} images, {p.get('patch')} px windows at stride "
             f"{p.get('stride')}, x{p.get('scale')} Real-ESRGAN queries):"]
    for name, r in ev.items():
        if name == "protocol":
            continue
        if "unavailable" in r:
            lines.append(f"  {name:9s} unavailable: {r['unavailable']}")
        else:
            lines.append(f"  {name:9s} top-1 {r['top1']:.3f}  top-10 {r['top10']:.3f}  ({r['queries']} queries, "
                         f"{r['windows']} windows)")
    return lines
