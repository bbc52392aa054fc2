"""`refsr evaluate`: PSNR, SSIM, LPIPS, CLIP-IQA, NIQE and FID with stated conventions."""

from __future__ import annotations

from pathlib import Path

import click

from refsr.metrics.fidelity import COLORS
from refsr.metrics.perceptual import LPIPS_NETS
from refsr.metrics.report import METRICS as METRIC_NAMES

from .common import StageCommand, device_option, overwrite_option, report, warn


def _parse_metrics(ctx, param, value):
    if value is None:
        return None
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in METRIC_NAMES]
    if bad or not names:
        raise click.BadParameter(f"{', '.join(bad) or repr(value)}; choose from {', '.join(METRIC_NAMES)} (comma-separated)")
    return names


def _parse_names(ctx, param, value):
    return [v.strip() for v in value.split(",")] if value else None


@click.command("evaluate", cls=StageCommand)
@click.option("--pred", type=click.Path(exists=True, path_type=Path), help="Folder of restored images (e.g. the output of `refsr sample`).")
@click.option("--gt", type=click.Path(exists=True, path_type=Path),
              help="Folder of ground-truth images, or a pair manifest (.jsonl: its hr images; the default crop border is then its scale). "
              "Without it only no-reference metrics (clipiqa, niqe) run.")
@click.option("--metrics", callback=_parse_metrics, default=None, metavar="LIST",
              help=f"Comma-separated subset of {','.join(METRIC_NAMES)} (default: all that apply).")
@click.option("--crop-border", type=click.IntRange(min=0), default=None,
              help="Pixels removed on each side for PSNR/SSIM/NIQE (default: the manifest's scale, else 0).")
@click.option("--color", type=click.Choice(COLORS), default="y", show_default=True,
              help="PSNR/SSIM on the BT.601 Y channel (MATLAB rgb2ycbcr, as BasicSR) or on RGB.")
@click.option("--suffix", default="_sr", show_default=True, help="Removed from prediction stems before pairing (stems without it pair as they are).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="report.json to write (default: PRED/report.json).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Per-image CSV to write (default: per_image.csv beside the report).")
@click.option("--strict", is_flag=True, help="Exit 1 if any metric is unavailable (missing weights); the report is still written.")
@click.option("--lpips-net", type=click.Choice(LPIPS_NETS), default="alex", show_default=True, help="LPIPS trunk network.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per batch.")
@click.option("--protocol", default=None, help="Free text recorded in the report, e.g. the reference protocol ('single ref', 'top-10 refs').")
@click.option("--compare", is_flag=True, help="Compare report.json files given as arguments instead of evaluating.")
@click.option("--names", callback=_parse_names, default=None, metavar="A,B", help="Column names for --compare (e.g. LDM,LDM+CA).")
@device_option
@overwrite_option
@click.argument("reports", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def evaluate(pred, gt, metrics, crop_border, color, suffix, output, csv_path, strict, lpips_net, batch_size, protocol,
             compare, names, device, overwrite, reports):
    """Score restored images against ground truth: PSNR, SSIM, LPIPS, CLIP-IQA, NIQE and FID.

    Reads the images in --pred and --gt (paired by file stem after removing --suffix;
    every unpaired file is an error, so is a size mismatch). Writes report.json (mean and
    count per metric, every convention used, package versions) and per_image.csv, and
    prints a table. PSNR/SSIM follow BasicSR: 8-bit values, Y channel of BT.601, border
    crop, SSIM with an 11x11 Gaussian window (sigma 1.5). NIQE (no reference, lower is
    better) follows BasicSR's calculate_niqe, with the pristine parameters shipped in
    refsr; an image smaller than two 96x96 blocks after the crop is an error with
    --metrics niqe (NIQE 'not computed' by default). A metric whose pretrained
    weights are not on this machine is reported as unavailable with how to supply them
    (exit 0; exit 1 with --strict). An existing report is shown, not recomputed, unless
    --overwrite.

    With --compare, reads two or more report.json files and prints them side by side
    with the differences to the first (↑: higher is better, ↓: lower is better).

    \b
    Examples:
      refsr evaluate --pred out/ --gt pairs/hr/ --crop-border 4
      refsr evaluate --pred out/ --gt pairs/manifest.jsonl -o out/report.json --strict
      refsr evaluate --pred out/ --metrics niqe --crop-border 4   # no ground truth
      refsr evaluate --compare ldm/report.json ldm_ca/report.json --names LDM,LDM+CA
    """
    from refsr.errors import InputError
    from refsr.metrics import report as rep

    if compare:
        if len(reports) < 2:
            raise click.UsageError("--compare needs at least two report.json files as arguments")
        report(rep.compare_reports([rep.read_report(p) for p in reports], names))
        return
    if reports:
        raise click.UsageError(f"unexpected argument(s) {' '.join(map(str, reports))}; report files go with --compare")
    if pred is None:
        raise click.UsageError("--pred is required (or use --compare)")
    output = output or (pred if pred.is_dir() else pred.parent) / "report.json"
    csv_path = csv_path or output.with_name("per_image.csv")
    if output.exists() and not overwrite:
        existing = rep.read_report(output)
        request = rep.request_of(pred, gt, metrics, crop_border, color, suffix, lpips_net)
        if existing.get("request") != request:
            changed = [k for k in request if (existing.get("request") or {}).get(k, "?") != request[k]]
            raise InputError(f"{output} exists from another request (differs in {', '.join(changed)}); use --overwrite or another -o")
        report(rep.format_table(existing))
        warn(f"{output} exists: shown, not recomputed (use --overwrite to recompute)")
        _check_strict(strict, {k: v["reason"] for k, v in existing["metrics"].items() if v["status"] == "unavailable"}, output)
        return
    try:
        result = rep.evaluate(pred, gt, metrics=metrics, crop_border=crop_border, color=color, suffix=suffix, batch_size=batch_size,
                              lpips_net=lpips_net, device=device, protocol=protocol)
    except ValueError as e:
        if "need ground truth" in str(e):
            raise click.UsageError(str(e)) from None
        raise
    rep.write_report(output, result)
    rep.write_per_image_csv(csv_path, result)
    report(rep.format_table(result.report))
    report(f"wrote {output} and {csv_path}")
    _check_strict(strict, result.unavailable, output)


def _check_strict(strict: bool, unavailable: dict, output: Path) -> None:
    """With --strict, exit 1 when a metric could not be computed."""
    from refsr.errors import MissingWeightsError

    if unavailable:
        warn(f"unavailable: {', '.join(unavailable)} (reasons in {output})")
        if strict:
            raise MissingWeightsError(f"--strict: metric(s) unavailable: {', '.join(unavailable)}; first reason: {next(iter(unavailable.values()))}")
