"""The ``matcher`` stage of `refsr train`: its own options and its runner.

`refsr_cli/train.py` wires it with ``@matcher_options`` on the command and, first thing
in its body, ``if o["stage"] == "matcher": return run_matcher_stage(o)``. The options
shared with the other stages (--data, -o, --steps, --batch-size, --lr, --lr-schedule,
--warmup, --ema-decay, --grad-clip, --mixed-precision, --checkpoint-every,
--keep-checkpoints, --validate-every, --log-every, --grad-accum, --resume, --overwrite,
--seed, --device, --workers) are read from that command; None means the matcher default.
"""

from __future__ import annotations

import os

import click

from .common import report

MATCHER_HELP = """
\b
Matcher stage (--stage matcher): contrastive (InfoNCE) training of the stage-2 patch
matcher of `refsr match`: a ResNet trunk + 1x1-conv projection head. --data is a folder
of photos (searched recursively) or a pair manifest (its HR crops); --holdout of the
images (by image) are kept out of training. Positive pair: a clean --patch fragment and
an overlapping fragment degraded with Real-ESRGAN's model (torch path) and upsampled;
the other fragments of the batch are negatives. Writes RUN/split.json, RUN/model/
(config.json + model.safetensors, for `refsr match --matcher RUN/model`) and
RUN/eval.json: top-1/top-10 location accuracy on held-out photos of the trained matcher
vs random weights (vs ImageNet weights when cached), also printed at the end.

\b
Matcher examples:
  refsr train --stage matcher --data photos/ --init none --depth 3 --patch 96 \\
      --steps 2000 --batch-size 32 -o runs/matcher
  refsr match pairs/manifest.jsonl --index refs.index/ --matcher runs/matcher/model -o m.jsonl
"""


def matcher_options(f):
    """Add the matcher-only options to a click command, and :data:`MATCHER_HELP` to its
    help (use it below ``@click.command``, so that the docstring is read after)."""
    import textwrap

    if f.__doc__ is not None:
        f.__doc__ = f.__doc__.rstrip() + "\n" + textwrap.indent(MATCHER_HELP, "    ")
    options = [
        click.option("--init", default="imagenet", show_default=True,
                     help="matcher: start from imagenet (cached torchvision weights), none (random), or a trained "
                     "matcher: shipped or a folder (it continues)."),
        click.option("--arch", default="resnet34", show_default=True, help="matcher: torchvision ResNet of the trunk."),
        click.option("--depth", type=click.IntRange(1, 4), default=3, show_default=True,
                     help="matcher: last ResNet stage kept (stride 4*2^(depth-1)); 2 is 8x smaller than 3."),
        click.option("--head-dim", type=click.IntRange(min=1), default=128, show_default=True,
                     help="matcher: channels of the projection head."),
        click.option("--patch", type=click.IntRange(min=8), default=96, show_default=True,
                     help="matcher: fragment size in pixels (training and evaluation)."),
        click.option("--scale", type=click.IntRange(min=1), default=4, show_default=True,
                     help="matcher: SR factor of the query degradation."),
        click.option("--temperature", type=click.FloatRange(min=1e-4), default=0.07, show_default=True,
                     help="matcher: InfoNCE temperature."),
        click.option("--max-side", type=click.IntRange(min=0), default=512, show_default=True,
                     help="matcher: images are downscaled to this longer side (0 = never)."),
        click.option("--export-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
                     help="matcher: dtype of the exported weights."),
        click.option("--eval-queries", type=click.IntRange(min=1), default=2, show_default=True,
                     help="matcher: degraded queries per held-out image."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def format_eval(ev: dict) -> list[str]:
    """One line per matcher of ``RUN/eval.json``'s ``eval``."""
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


def run_matcher_stage(o: dict) -> None:
    """Run `refsr train --stage matcher` from the command's parsed options ``o``."""
    from refsr.train import TrainOptions
    from refsr.train.matcher import MATCHER_TRAIN_DEFAULTS, train_matcher

    d = MATCHER_TRAIN_DEFAULTS
    pick = lambda key, default_key=None: d[default_key or key] if o.get(key) is None else o[key]  # noqa: E731
    opts = TrainOptions(
        output=o["output"], steps=o["steps"], batch_size=pick("batch_size"), lr=pick("lr"), seed=o["seed"],
        device=o["device"], resume=o["resume"], overwrite=o["overwrite"], checkpoint_every=o["checkpoint_every"],
        keep_checkpoints=o["keep_checkpoints"], mixed_precision=o["mixed_precision"], grad_accum=o["grad_accum"],
        grad_clip=pick("grad_clip"), ema_decay=pick("ema_decay"), warmup_steps=pick("warmup", "warmup_steps"),
        lr_schedule=pick("lr_schedule"), validate_every=pick("validate_every"), log_every=o["log_every"],
        workers=o["workers"] or 0,
    )
    if o["patch"] % o["scale"]:
        raise click.BadParameter(f"{o['patch']} is not a multiple of --scale {o['scale']}", param_hint="--patch")
    result = train_matcher(o["data"], opts, init=o["init"], arch=o["arch"], depth=o["depth"], head_dim=o["head_dim"],
                           patch=o["patch"], scale=o["scale"], temperature=o["temperature"], holdout=o["holdout"],
                           max_side=o["max_side"] or None, export_dtype=o["export_dtype"], eval_queries=o["eval_queries"])
    if int(os.environ.get("RANK", "0")) == 0:
        report(f"trained matcher for {opts.steps} steps on {result['train_images']} images: {result['model']}")
        for line in format_eval(result["eval"]) if result["eval"] else []:
            report(line)
