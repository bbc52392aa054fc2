"""Benchmark reference retrieval: hnswlib index, OpenCLIP embedding, the match stage.

Prints figures and the machine. Synthetic data only (no pretrained weights needed):

* hnswlib on a clustered synthetic collection (N x 512, 200,000 by default, 1,000,000
  with --full): build time, query latency p50/p99 (one query at a time, 1 thread),
  recall@10 against exact brute force, for M / ef_construction / ef.
* OpenCLIP ViT-B-32 image-tower throughput (random weights: speed does not depend on them).
* `match` stage 2 throughput: targets/s with 20 candidates of 1024x1024 at patch 512,
  stride 256 (random ResNet-34; candidate feature maps are computed once per target here,
  i.e. no cache hits: the worst case).

    python scripts/bench_retrieval.py [--n 200000] [--full] [--queries 1000] [--device cpu]
    python scripts/bench_retrieval.py --full --skip clip match --M 32 --ef-construction 400 --ef 128,256,512
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python scripts/bench_retrieval.py --full --skip clip match --M 32 \
        --ef-construction 400 --ef 224,224,224 --cache /tmp/bench1m   # the 1M target; built once, then reloaded
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} threads {torch.get_num_threads()}, {gpu}"


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit vectors around ``clusters`` random centres (like photo collections)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top10(queries: np.ndarray, data: np.ndarray, chunk: int = 100) -> np.ndarray:
    """(Q, 10) indices of the exact nearest neighbours by cosine (unit vectors), brute force in
    chunks of queries (argpartition, then a sort of the 10), so memory stays at chunk x N."""
    out = np.empty((len(queries), 10), dtype=np.int64)
    for i in range(0, len(queries), chunk):
        sims = queries[i:i + chunk] @ data.T
        top = np.argpartition(-sims, 10, axis=1)[:, :10]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[i:i + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def bench_hnsw(n: int, n_queries: int, dim: int = 512, M: int = 16, ef_construction: int = 200,
               efs: tuple[int, ...] = (32, 64, 128, 256), cache: str | None = None) -> None:
    """Build (or, with ``cache`` holding one made with the same settings, load) the index,
    then time one-at-a-time queries on one thread for each ``ef``."""
    import hnswlib

    name = f"N{n}_d{dim}_M{M}_efc{ef_construction}_q{n_queries}"
    files = {k: os.path.join(cache, f"{name}.{k}") for k in ("bin", "npz")} if cache else {}
    queries = clustered(n_queries, dim, clusters=max(10, n // 1000), seed=0)[:n_queries]
    queries = queries + 0.05 * np.random.default_rng(1).standard_normal(queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = hnswlib.Index(space="cosine", dim=dim)
    if files and all(os.path.exists(f) for f in files.values()):
        t = time.perf_counter()
        index.load_index(files["bin"], max_elements=n)
        truth = np.load(files["npz"])["truth"]
        print(f"hnswlib: N={n} dim={dim} M={M} ef_construction={ef_construction}: loaded {files['bin']} "
              f"in {time.perf_counter() - t:.1f} s")
    else:
        data = clustered(n, dim, clusters=max(10, n // 1000))
        t = time.perf_counter()
        index.init_index(max_elements=n, M=M, ef_construction=ef_construction, random_seed=100)
        index.add_items(data, np.arange(n))
        build = time.perf_counter() - t
        truth = exact_top10(queries, data)
        print(f"hnswlib: N={n} dim={dim} M={M} ef_construction={ef_construction}: build {build:.1f} s "
              f"({n / build:.0f} vectors/s, {os.cpu_count()} threads)")
        del data
        if files:
            os.makedirs(cache, exist_ok=True)
            index.save_index(files["bin"])
            np.savez(files["npz"], truth=truth)
    print(f"  malloc: GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    index.set_num_threads(1)
    for ef in efs:
        index.set_ef(ef)
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            labels, _ = index.knn_query(q[None], k=10)
            lat.append(time.perf_counter() - t)
            found.append(labels[0])
        recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])
        print(f"  ef={ef:4d}: recall@10 {recall:.4f}, latency p50 {np.percentile(lat, 50) * 1e3:.3f} ms, "
              f"p99 {np.percentile(lat, 99) * 1e3:.3f} ms (1 thread, one query at a time)")


def bench_clip(device: str, batch: int = 32, batches: int = 3) -> None:
    import torch

    from refsr.retrieval.embed import Embedder, EmbedderSpec

    emb = Embedder(EmbedderSpec("ViT-B-32", None), device=device)
    images = [np.random.default_rng(i).random((256, 256, 3), dtype=np.float32) for i in range(batch)]
    emb.embed(images[:2])
    t = time.perf_counter()
    for _ in range(batches):
        emb.embed(images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(f"OpenCLIP ViT-B-32 (random weights) on {device}: {batch * batches / dt:.1f} images/s "
          f"(batch {batch}, preprocessing included)")


def bench_match(device: str, targets: int = 2, candidates: int = 20) -> None:
    from refsr.models.matcher import load_matcher
    from refsr.retrieval.match import feature_map, score_windows

    net = load_matcher("none", device)
    rng = np.random.default_rng(0)
    cands = [rng.random((1024, 1024, 3), dtype=np.float32) for _ in range(candidates)]
    query = rng.random((512, 512, 3), dtype=np.float32)
    feature_map(net, query, device)
    t = time.perf_counter()
    for _ in range(targets):
        q = feature_map(net, query, device).mean((1, 2))
        for c in cands:
            score_windows(q, feature_map(net, c, device), net.stride, 1024, 1024, 512, 256, keep=10)
    dt = time.perf_counter() - t
    print(f"match stage 2 on {device}: {targets / dt:.3f} targets/s ({candidates} candidates 1024x1024, "
          f"patch 512 stride 256, feature maps not cached)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--full", action="store_true", help="1,000,000 vectors")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip", nargs="*", default=[], choices=["hnsw", "clip", "match"])
    ap.add_argument("--M", type=int, default=16, help="hnswlib graph degree (refsr index-refs uses 16)")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="32,64,128,256", help="comma-separated query ef values")
    ap.add_argument("--cache", metavar="DIR", help="save the built index and its ground truth here, and load "
                    "them on a later run with the same settings (latency runs without a rebuild)")
    args = ap.parse_args()
    print(machine())
    if "hnsw" not in args.skip:
        bench_hnsw(1_000_000 if args.full else args.n, args.queries, M=args.M, ef_construction=args.ef_construction,
                   efs=tuple(int(e) for e in args.ef.split(",")), cache=args.cache)
    if "clip" not in args.skip:
        bench_clip(args.device)
    if "match" not in args.skip:
        bench_match(args.device)


if __name__ == "__main__":
    main()
