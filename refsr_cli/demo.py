"""`refsr demo`: the whole chain on bundled photos with the shipped model."""

from __future__ import annotations

import click

from refsr.sample import COLOR_FIXES

from .common import StageCommand, device_option, report, seed_option, warn


@click.command("demo", cls=StageCommand)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default="refsr-demo", show_default=True,
              help="Folder for every stage's files, the picture and the report.")
@click.option("--model", default=None, help="Model folder (default: the model shipped with refsr).")
@click.option("--crop", type=click.IntRange(min=64), default=256, show_default=True,
              help="Side of the HR target in pixels (the LR input is crop / scale).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="DDIM sampling steps, as `refsr sample --steps` (default: the model's recommended value, 4 "
              "for the shipped model, else 50).")
@click.option("--clip-pretrained", default="laion2b_s34b_b79k", show_default=True,
              help="OpenCLIP tag for stage 1 ('none' = random weights; used anyway when not cached).")
@click.option("--matcher", default=None,
              help="Patch matcher: shipped (default), imagenet, none or a folder from `refsr train matcher`.")
@click.option("--color-fix", type=click.Choice(COLOR_FIXES), default=None,
              help="Match the restored images' colour to the upsampled input, as `refsr sample --color-fix` "
              "(default: the model's recommended value, luma for the shipped model, else none).")
@click.option("--color-fix-levels", type=click.IntRange(min=1), default=None, metavar="L",
              help="Wavelet levels of the wavelet and luma fixes, as `refsr sample --color-fix-levels` (default: the "
              "model's recommended value, 4 for the shipped model, else 5).")
@click.option("--start-strength", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Where the reverse process starts, as `refsr sample --start-strength` (default: the model's "
              "recommended value, 0.5 for the shipped model; 1 = from pure noise).")
@click.option("--draws", type=click.IntRange(min=1), default=None, metavar="K",
              help="Mean of K draws of the start noise, as `refsr sample --draws` (default: the model's recommended "
              "value, 4 for the shipped model, else 1).")
@click.option("--mirror/--no-mirror", default=None,
              help="Every second draw restores the mirror image, as `refsr sample --mirror` (default: the model's "
              "recommended value, on for the shipped model, else off).")
@seed_option
@device_option
def demo(out_dir, model, crop, steps, clip_pretrained, matcher, color_fix, color_fix_levels, start_strength, draws, mirror,
         seed, device):
    """Run the whole refsr chain on real photos that ship with scikit-image.

    Target: the left view of scikit-image's stereo motorcycle. References: its right view
    (the same scene from another position) and two unrelated photos. The demo degrades
    the target (Real-ESRGAN, x4), indexes the references (OpenCLIP + hnswlib), matches
    fragments (CLIP, then the patch matcher), restores the LR image with the shipped
    model without and with the references, and evaluates both against the HR.

    Writes into OUT: photos/, references/, pairs/ (manifest.jsonl), refs.index/,
    matches.jsonl, fragments/, restored/{bicubic,without_refs,with_refs}/,
    report_*.json, report.json and comparison.png (LR bicubic | no references | with
    references | ground truth, with the matched fragments). No network needed.

    \b
    Example:
      refsr demo                      # -> refsr-demo/comparison.png, refsr-demo/report.json
      refsr demo -o /tmp/demo --steps 50
    """
    from refsr.demo import run_demo

    result = run_demo(out_dir, model=model, crop=crop, steps=steps, seed=seed, device=device,
                      clip_pretrained=None if clip_pretrained == "none" else clip_pretrained, matcher=matcher,
                      color_fix=color_fix, color_fix_levels=color_fix_levels, start_strength=start_strength,
                      draws=draws, mirror=mirror)
    for note in result.notes:
        warn(note)
    report(result.table)
    report(f"picture: {result.picture}")
    report(f"report:  {result.report}")
