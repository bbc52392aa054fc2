"""`refsr degrade`: HR photos -> HR/LR training and test pairs + manifest.jsonl."""

from __future__ import annotations

import click

from refsr.degrade.pipeline import SCALES

from .common import (StageCommand, deprecated_alias, overwrite_option, report, seed_option, shard_option,
                     skip_bad_option, warn, workers_option)


def _check_crop(ctx, param, value):
    if value is None or str(value).lower() == "none":
        return None
    try:
        crop = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected a size in pixels (e.g. 512) or 'none'") from None
    if crop <= 0:
        raise click.BadParameter(f"{value!r}; expected a positive size or 'none'")
    return crop


def _check_preset(ctx, param, value):
    from refsr.degrade.params import list_presets

    if value not in list_presets():
        raise click.BadParameter(f"{value!r}; expected one of {', '.join(list_presets())}")
    return value


@click.command("degrade", cls=StageCommand)
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Output folder (hr/, lr/, manifest.jsonl).")
@click.option("--scale", type=click.Choice([str(s) for s in SCALES]), default="4", show_default=True, help="SR factor: LR = HR / scale.")
@click.option("--crop", default="512", show_default=True, callback=_check_crop, metavar="SIZE|none",
              help="HR crop side (a multiple of the scale; smaller images are reflect-padded), or 'none' for the whole image.")
@click.option("--crops-per-image", type=click.IntRange(min=1), default=1, show_default=True, help="Random crops (pairs) per input image.")
@click.option("--preset", default="realesrgan", show_default=True, callback=_check_preset, help="Degradation recipe: realesrgan or bicubic.")
@click.option("--degradation-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file overriding preset parameters (same names as the preset; unknown keys are an error).")
@click.option("--config", "deprecated_config", type=click.Path(exists=True, dir_okay=False), default=None, hidden=True,
              help="Deprecated name of --degradation-config.")
@click.option("--usm/--no-usm", default=None, help="Unsharp-mask the HR target (Real-ESRGAN's gt_usm). Default: the preset's (off).")
@seed_option
@workers_option
@overwrite_option
@skip_bad_option
@shard_option
@click.option("--recursive", is_flag=True, help="Descend into subfolders of input folders.")
@click.option("--merge", "merge_only", is_flag=True, help="Only merge OUT/manifest.shard-*-of-N.jsonl into OUT/manifest.jsonl.")
def degrade(inputs, out, scale, crop, crops_per_image, preset, degradation_config, deprecated_config, usm, seed, workers,
            overwrite, skip_bad, shard, recursive, merge_only):
    """Make HR/LR pairs from HR photos with Real-ESRGAN's second-order degradation.

    Reads image files and/or folders (PNG, JPEG, WebP, TIFF, BMP; 8/16-bit, gray and RGBA
    accepted, alpha dropped). Writes OUT/hr/<id>.png, OUT/lr/<id>.png and
    OUT/manifest.jsonl: one JSON line per pair with the source, its sha256, the crop, the
    seed and every degradation parameter drawn. The same seed gives the same bytes for any
    --workers. A rerun skips complete pairs (resume) unless --overwrite.

    With --shard K/N each shard writes OUT/manifest.shard-K-of-N.jsonl; the last shard to
    finish merges all parts into OUT/manifest.jsonl (or run --merge afterwards).

    \b
    Examples:
      refsr degrade photos/ -o pairs/
      refsr degrade photos/ -o pairs/ --crop 256 --crops-per-image 4 --seed 1
      refsr degrade photos/ -o bicubic_x4/ --preset bicubic --crop none
      refsr degrade photos/ -o pairs/ --shard 0/4      # ... up to --shard 3/4
      refsr degrade --merge -o pairs/
    """
    from refsr.degrade.pipeline import degrade_folder, merge_shards

    if merge_only:
        report(f"merged shard manifests into {merge_shards(out)}")
        return
    if not inputs:
        raise click.UsageError("give at least one input image or folder")
    config = deprecated_alias("--degradation-config", "--config", degradation_config, deprecated_config,
                              "degradation_config", "--config names a model config in `refsr train`")
    try:
        result = degrade_folder(
            inputs, out, scale=int(scale), crop=crop, crops_per_image=crops_per_image, preset=preset, config=config,
            usm=usm, seed=seed, workers=workers, overwrite=overwrite, skip_bad=skip_bad, shard=shard, recursive=recursive,
        )
    except ValueError as e:
        if type(e) is ValueError:  # an option value the library refused (InputError is a file problem)
            raise click.BadParameter(str(e)) from None
        raise
    for source, message in result.bad:
        warn(f"skipped bad input: {message}")
    report(f"{result.written} pairs written, {result.skipped} already complete, {len(result.bad)} bad inputs skipped")
    report(f"manifest: {result.manifest}" + (f" (all shards merged into {result.manifest.parent / 'manifest.jsonl'})" if result.merged else ""))
