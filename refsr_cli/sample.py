"""`refsr sample`: restore LR images (with references) into HR images."""

from __future__ import annotations

import click

from refsr.sample import COLOR_FIXES, PRECISIONS, list_samplers

from .common import (StageCommand, check_disjoint, device_option, overwrite_option, paths_option, report, seed_option,
                     shard_option, warn)


@click.command("sample", cls=StageCommand)
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: <stem><suffix>.png per input, plus run.json.")
@click.option("--model", default=None, metavar="DIR|NAME",
              help="Model folder from `refsr train`, any diffusers LDM-SR folder, or a Hugging Face "
              "repo id (looked up in the HF cache, downloaded only with network). Default: the shipped model.")
@paths_option("--refs", help="Reference images used for every input: a file, a folder or a comma-separated "
              "list (repeatable; never also an input); the centred square of each image is resized to the "
              "model's reference size.")
@click.option("--matches", type=click.Path(exists=True, dir_okay=False),
              help="matches.jsonl from `refsr match`: each input gets its own fragments (boxes cropped "
              "from the reference images), found by pair id, query path or file stem.")
@click.option("--max-refs", type=click.IntRange(min=0), default=None,
              help="At most this many fragments per image (default: the model's max_refs).")
@click.option("--sampler", type=click.Choice(list_samplers()), default="ddim", show_default=True,
              help="ddim (DDIM), dpmpp (DPM-Solver++ 2M) or ddpm (ancestral).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Denoising steps (of a full schedule; a start strength S < 1 runs about S x steps). Default: the "
              "model's recommended value (recipe.recommended_steps; 4 for the shipped model), else 50.")
@click.option("--eta", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="DDIM eta (0 = deterministic DDIM); other samplers ignore it.")
@click.option("--start-strength", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Where the reverse process starts: 1 = from pure noise; S < 1 = at timestep S x T, from the "
              "noised latent of the bicubic-upsampled input (runs about S x --steps steps). Default: the model's "
              "recommended value (recipe.recommended_start_strength in its model_index.json; 0.5 for the shipped "
              "model), else 1.")
@click.option("--draws", type=click.IntRange(min=1), default=None, metavar="K",
              help="Denoise K draws of the start noise (the contexts computed once) and decode the mean latent: "
              "closer to the mean restoration given the input, which PSNR/SSIM reward, at K times the denoising "
              "time and with less fine texture. Default: the model's recommended value (recipe.recommended_draws; "
              "4 for the shipped model), else 1.")
@click.option("--mirror/--no-mirror", default=None,
              help="With --draws K >= 2, every second draw restores the left-right mirror image; each "
              "orientation's mean latent is decoded, the mirrored image mirrored back and the two averaged: a "
              "self-ensemble for one more VQ decode per image, a little higher PSNR/SSIM and smoother (the "
              "references are used as they are: photos are mirror-symmetric). Default: the model's recommended "
              "value (recipe.recommended_mirror; on for the shipped model), else off.")
@seed_option
@click.option("--tile", type=click.IntRange(min=0), default=128, show_default=True,
              help="Tile size in input (LR) pixels; larger inputs are restored in overlapping tiles "
              "blended at every step (0 = never tile). 128 LR px = 512 HR px at x4.")
@click.option("--tile-overlap", type=click.IntRange(min=0), default=16, show_default=True,
              help="Overlap of neighbouring tiles in input pixels.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Latents per U-Net/decoder call: tiles, and with --draws K the K draws of each tile (or "
              "of the whole image), e.g. --batch-size 4 for the 4 draws in one call (faster on GPU and on "
              "small images, more memory).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Autocast precision (fp16 on CUDA only; bf16 on a CPU is fast only with bf16 instructions, "
              "AVX512-BF16 or AMX, and emulated otherwise: a warning says so).")
@click.option("--color-fix", type=click.Choice(COLOR_FIXES), default=None,
              help="Match the output's colour to the bicubic-upsampled input (wavelet: its low-frequency "
              "bands; adain: per-channel mean and std; luma: wavelet, then the input's chroma (BT.601 Cb, Cr), so "
              "the model restores the luma only; none). Default: the model's recommended value "
              "(recipe.recommended_color_fix; luma for the shipped model), else none.")
@click.option("--color-fix-levels", type=click.IntRange(min=1), default=None, metavar="L",
              help="Wavelet levels of the wavelet and luma fixes: the input gives the output's bands coarser than "
              "about 2^(L+1) px, so each level less takes one more octave from the input. Default: the model's "
              "recommended value (recipe.recommended_color_fix_levels; 4 for the shipped model), else 5 (StableSR's).")
@click.option("--outscale", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Final scale relative to the input (LANCZOS resize); default: the model's scale.")
@click.option("--suffix", default="_sr", show_default=True, help="Appended to each output's stem.")
@shard_option
@overwrite_option
@device_option
@click.option("--merge", "merge_only", is_flag=True,
              help="Only merge the run logs in OUT (of every shard, finished or killed) into OUT/run.json; "
              "no run may be writing into OUT.")
def sample(inputs, out_dir, model, refs, matches, max_refs, sampler, steps, eta, start_strength, draws, mirror, seed, tile,
           tile_overlap, batch_size, precision, color_fix, color_fix_levels, outscale, suffix, shard, overwrite, device,
           merge_only):
    """Restore LR images with a latent diffusion model, guided by reference images.

    Reads LR image files, folders or pair manifests (INPUTS; a manifest contributes its
    `lr` images), a model folder, and optionally reference images (--refs) or per-input
    fragments (--matches). Writes OUT/<stem><suffix>.png for each input (same bit depth,
    gray stays gray, alpha upsampled) and OUT/run.json (model, sampler, steps, seed,
    precision, tiling and the references used for each image). Existing outputs are
    skipped unless --overwrite; the same seed, device and precision give the same bytes.

    With --shard K/N each shard restores every N-th input and logs its records in its own
    hidden OUT/.run-*.jsonl; the last shard to finish merges the logs into OUT/run.json (a
    killed shard's log once the shard is rerun, or with --merge).

    \b
    Examples:
      refsr sample --model runs/x/model lr/ -o out/ --matches matches.jsonl
      refsr sample --model runs/x/model photo.png --refs my_refs/ -o out/ --color-fix wavelet
      refsr sample --model CompVis/ldm-super-resolution-4x-openimages lr/ -o out/ --steps 100
      refsr sample --model runs/x/model pairs/manifest.jsonl -o out/ --shard 0/4
      refsr sample --merge -o out/
    """
    from pathlib import Path

    from refsr.sample import SampleSettings, sample_files
    from refsr.sample.restore import merge_run_logs

    if merge_only:
        report(f"merged the run logs into {merge_run_logs(Path(out_dir), everything=True)}")
        return
    if not inputs:
        raise click.UsageError("give at least one input image, folder or manifest (or --merge -o OUT)")

    check_disjoint(inputs, refs, "--refs")
    if tile and tile_overlap >= tile:
        raise click.BadParameter(f"{tile_overlap} must be smaller than --tile ({tile})", param_hint="--tile-overlap")
    settings = SampleSettings(sampler=sampler, steps=steps, eta=eta, tile=tile, tile_overlap=tile_overlap,
                              batch_size=batch_size, precision=precision, color_fix=color_fix,
                              color_fix_levels=color_fix_levels,
                              start_strength=start_strength, draws=draws, mirror=mirror)
    summary = sample_files(inputs, out_dir, model=model, refs=refs, matches=matches, settings=settings, seed=seed,
                           device=device, outscale=outscale, suffix=suffix, shard=shard, overwrite=overwrite,
                           max_refs=max_refs)
    for message in summary.warnings:
        warn(message)
    if summary.skipped:
        report(f"skipped {len(summary.skipped)} existing output(s) (use --overwrite to redo them)")
    if summary.fragments_encoded:
        report(f"reference fragments: {summary.fragments_encoded} encoded, {summary.fragments_reused} reused "
               f"(the same file and box as an earlier input's)")
    report(f"wrote {len(summary.written)} image(s) to {out_dir} in {summary.seconds:.1f} s; settings in {summary.run_json}")
