"""`refsr match`: the best reference fragments for each target (CLIP, then a patch matcher)."""

from __future__ import annotations

import click

from refsr.retrieval.match import GROUP_BY, QUERY_KINDS

from .common import StageCommand, deprecated_alias, device_option, overwrite_option, report, shard_option


@click.command("match", cls=StageCommand)
@click.argument("queries", type=click.Path(exists=True), required=False)
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False),
              help="Index folder made by `refsr index-refs`.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Matches file (.jsonl) to write.")
@click.option("--top-images", type=click.IntRange(min=1), default=20, show_default=True, help="Stage 1: CLIP candidates per query.")
@click.option("--top-refs", type=click.IntRange(min=1), default=10, show_default=True, help="Stage 2: fragments kept per query.")
@click.option("--window", type=click.IntRange(min=1), default=512, show_default=True,
              help="Side of the windows scored in each candidate (the fragment size), in pixels.")
@click.option("--patch", "deprecated_patch", type=click.IntRange(min=1), default=None, hidden=True,
              help="Deprecated name of --window.")
@click.option("--stride", type=click.IntRange(min=1), default=256, show_default=True, help="Step between fragments.")
@click.option("--query", "query_kind", type=click.Choice(QUERY_KINDS), default="hr", show_default=True,
              help="For a pair manifest: the HR crop (training) or the LR image upsampled bicubically (test time).")
@click.option("--group-by", type=click.Choice(GROUP_BY), default=None,
              help="Only consider references in the same folder as the query's source image.")
@click.option("--matcher", default="shipped", show_default=True,
              help="Patch matcher: shipped (the trained matcher shipped with refsr, refsr/weights/matcher), "
              "imagenet (torchvision ResNet-34, cached weights), none (random, seed 0), or a trained matcher "
              "folder (from `refsr train matcher`).")
@click.option("--nms-iou", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Windows of one image overlapping a better one by more than this IoU are dropped.")
@click.option("--save-crops", type=click.Path(file_okay=False), default=None, help="Also write the fragments as PNGs here.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CLIP weights file, if the index was built with --weights and the file moved.")
@device_option
@shard_option
@overwrite_option
@click.option("--merge", "merge_only", is_flag=True,
              help="Only merge OUTPUT's shard parts (NAME.shard-K-of-N.jsonl) into OUTPUT.")
def match(queries, index_dir, output, top_images, top_refs, window, deprecated_patch, stride, query_kind, group_by,
          matcher, nms_iou, save_crops, weights, device, shard, overwrite, merge_only):
    """For each query in QUERIES (a folder of images, or a pair manifest.jsonl from
    `refsr degrade`), find the --top-refs best reference fragments in the index.

    Stage 1 takes the --top-images nearest images by OpenCLIP embedding (the model
    recorded in the index); stage 2 scores every window (--window pixels a side, every --stride) of each
    candidate with ResNet-34 features and keeps the best, without overlaps. A query never
    gets its own source image. Writes OUTPUT (JSON Lines, format refsr.matches/1: id,
    query, refs [{path, box [x, y, w, h], score, image_score}], matcher); with --shard
    K/N, each shard writes its part NAME.shard-K-of-N.jsonl beside OUTPUT and the last shard
    to finish merges all parts into OUTPUT (or run --merge afterwards).

    \b
    Examples:
      refsr match pairs/manifest.jsonl --index refs.index/ -o matches.jsonl
      refsr match pairs/manifest.jsonl --index refs.index/ -o test.jsonl --query lr --group-by parent
      refsr match photos/ --index refs.index/ -o m.jsonl --matcher none --save-crops crops/
      refsr match pairs/manifest.jsonl --index refs.index/ -o m.jsonl --shard 0/4   # -> m.shard-0-of-4.jsonl
      refsr match --merge -o m.jsonl     # merge explicitly (the last shard to finish already does)
    """
    from refsr.device import resolve_device
    from refsr.retrieval.embed import Embedder
    from refsr.retrieval.index import open_index
    from refsr.retrieval.match import MatchSettings, match_queries, merge_matches

    if merge_only:
        report(f"merged shard parts into {merge_matches(output)}")
        return
    if queries is None or index_dir is None:
        raise click.UsageError("give QUERIES and --index (or --merge -o OUTPUT)")
    window = deprecated_alias("--window", "--patch", window, deprecated_patch, "window",
                              "--patch names the matcher's training patch in `refsr train matcher`")
    spec = Embedder.spec_for(open_index(index_dir).identity, weights) if weights else None
    settings = MatchSettings(top_images, top_refs, window, stride, group_by, nms_iou)
    s = match_queries(queries, index_dir, output, settings, query_kind=query_kind, matcher=matcher,
                      save_crops=save_crops, device=str(resolve_device(device)), shard=shard or (0, 1),
                      overwrite=overwrite, embedder_spec=spec)
    if s.skipped:
        report(f"{s.output} exists; kept it (use --overwrite to redo)")
    else:
        resumed = f" ({s.resumed} resumed from an interrupted run)" if s.resumed else ""
        report(f"{s.output}: {s.queries} queries matched{resumed}")
    if s.merged:
        report(f"all shards merged into {output}")
