"""`refsr index-refs`: embed reference photos with OpenCLIP into an hnswlib index folder."""

from __future__ import annotations

import click

from .common import StageCommand, deprecated_alias, device_option, report, shard_option, workers_option


@click.command("index-refs", cls=StageCommand)
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False), help="Index folder (created if absent).")
@click.option("--clip-model", default="ViT-B-32", show_default=True,
              help="OpenCLIP architecture: a model name, or the path of an OpenCLIP model config .json.")
@click.option("--model", "deprecated_model", default=None, hidden=True,
              help="Deprecated name of --clip-model (--model means a refsr model elsewhere).")
@click.option("--pretrained", default="laion2b_s34b_b79k", show_default=True,
              help="OpenCLIP pretrained tag (must be cached: no download), or 'none' for random weights.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local CLIP weights (.safetensors or weights-only torch file); overrides --pretrained.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@workers_option
@device_option
@click.option("--prune", is_flag=True, help="Drop index entries whose files no longer exist.")
@shard_option
@click.option("--merge", "--build", "build", is_flag=True,
              help="Only merge the embedding parts in DIR/parts (e.g. of all shards) into the index (--build: same).")
@click.option("--info", is_flag=True,
              help="Only print count, model, dimension, graph settings and size on disk of the index.")
@click.option("--hnsw-m", type=click.IntRange(2, 128), default=None,
              help="Links per node of a new index's hnswlib graph (fixed when the index is made).  [default: 16; "
                   "32 for about a million references]")
@click.option("--ef-construction", type=click.IntRange(min=8), default=None,
              help="Build-time candidate list of a new index (fixed when the index is made).  [default: 200]")
@click.option("--ef-search", type=click.IntRange(min=1), default=None,
              help="Query-time candidate list, stored in the index (can be changed later, also with --merge); "
                   "higher is slower and finds more true neighbours.  [default: 256; 512 for about a million]")
def index_refs(inputs, index_dir, clip_model, deprecated_model, pretrained, weights, batch_size, workers, device, prune,
               shard, build, info, hnsw_m, ef_construction, ef_search):
    """Embed the images of INPUTS (files or folders, searched recursively) with OpenCLIP
    and add them to the hnswlib index folder DIR.

    Writes DIR/index.json, DIR/items.jsonl and DIR/index.bin (replaced atomically), and
    DIR/parts/ while embedding. Reruns embed only new files (by sha256); an interrupted
    run resumes. With --shard K/N each job embeds every N-th file into
    DIR/parts/part-K-of-N.npz; the last shard to finish (or --merge) merges them into the index.

    The graph defaults (M 16, ef-search 256) find the true 10 nearest at recall >= 0.95 in
    under 2 ms per query up to about 200,000 references; for a million, make the index with
    --hnsw-m 32 --ef-search 512 (docs/match.md has the measured curves).

    \b
    Examples:
      refsr index-refs refs/ --index refs.index/
      refsr index-refs refs/ more/ --index refs.index/ --prune      # later: add, drop gone
      refsr index-refs refs/ --index refs.index/ --shard 3/8         # job 3 of 8
      refsr index-refs --index refs.index/ --merge                  # merge all parts
      refsr index-refs --index refs.index/ --info
      refsr index-refs big/ --index big.index/ --hnsw-m 32 --ef-search 512   # ~1M references
      refsr index-refs --index big.index/ --merge --ef-search 384           # change ef-search later
    """
    from refsr.retrieval.embed import EmbedderSpec
    from refsr.retrieval.index import GraphSettings, build_index, index_info, index_refs as run_index_refs

    graph = GraphSettings(hnsw_m, ef_construction, ef_search)
    if info and graph != GraphSettings():
        raise click.UsageError("--info only reads the index; give --hnsw-m/--ef-construction/--ef-search "
                               "when indexing, or --ef-search with --merge")
    if info or build:
        if info:
            d = index_info(index_dir)
            pending = f", pending parts: {' '.join(d['pending_parts'])}" if d["pending_parts"] else ""
            report(f"{index_dir}: {d['count']} images, model {d['model']}, dim {d['dim']}, "
                   f"hnsw M {d['M']}, ef-construction {d['ef_construction']}, ef-search {d['ef_search']}, "
                   f"{_size(d['bytes'])} on disk, generation {d['generation']}{pending}")
        else:
            s = build_index(index_dir, prune=prune, graph=graph)
            report(f"{index_dir}: {s.count} images (+{s.added} added, {s.replaced} replaced, {s.pruned} pruned)")
        return
    if not inputs:
        raise click.UsageError("give INPUTS to index (or --info / --merge)")
    clip_model = deprecated_alias("--clip-model", "--model", clip_model, deprecated_model, "clip_model",
                                  "--model names a refsr model in other commands")
    spec = EmbedderSpec(clip_model, None if pretrained.lower() == "none" else pretrained, weights)
    s = run_index_refs(list(inputs), index_dir, spec, batch_size=batch_size, workers=workers,
                       device=_device(device), prune=prune, shard=shard or (0, 1), graph=graph)
    built = f"index {s.count} images (+{s.added}, {s.replaced} replaced, {s.pruned} pruned)" if s.built else (
        f"index unchanged ({s.count} images)" if (shard or (0, 1))[1] == 1 else "waiting for the other shards (or --merge)")
    report(f"{index_dir}: embedded {s.embedded}, reused {s.reused}; {built}")


def _device(spec):
    from refsr.device import resolve_device

    return str(resolve_device(spec))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
