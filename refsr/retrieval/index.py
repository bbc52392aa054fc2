"""The reference index folder: OpenCLIP embeddings in an hnswlib cosine index.

Layout of ``DIR`` (format ``refsr.index/1``)::

    index.json     format, model identity, dim, space, count, generation, checksums
    items.jsonl    one line per image: label, path (relative to DIR), sha256, width, height
    index.bin      hnswlib graph and vectors (labels = items' labels)
    parts/         embedding parts not yet in the index (shards, interrupted runs)

Crash safety. A commit writes the three files into ``DIR/.staging/``, ``index.json``
last (it records the generation and the checksums of the other two, so a staging folder
with an ``index.json`` is complete), then moves them into ``DIR`` one by one. Whoever
opens the index next and finds a complete staging folder finishes the moves (roll
forward); an incomplete one is discarded. A reader checks the checksums, so it never
mixes generations. Embeddings are appended to ``parts/`` while they are computed, so
an interrupted run resumes without embedding the same file twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_json, read_jsonl, relative_path, resolve_path, sha256_file, write_json, write_jsonl
from .embed import EmbedderIdentity

log = logging.getLogger(__name__)

INDEX_FORMAT = "refsr.index/1"
PART_FORMAT = "refsr.index-part/1"
FILES = ("index.bin", "items.jsonl", "index.json")  # commit order: index.json last
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 200, 256


@dataclass(frozen=True)
class GraphSettings:
    """hnswlib settings of an index; ``None`` keeps the index's own (or the default for a new one).

    ``M`` (links per node) and ``ef_construction`` are fixed when an index is made; ``ef_search``
    (the candidate list of a query, at least ``k``) is stored in ``index.json`` and can be changed
    later. The defaults (16, 200, 256) give recall@10 >= 0.95 under 2 ms per query up to about
    200,000 references; a million needs ``M=32, ef_search=512`` (docs/match.md).
    """

    M: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None

    def check_against(self, index: "RefIndex") -> None:
        """Refuse a build setting that differs from the one ``index`` was made with."""
        made = index.graph
        for name, flag in (("M", "--hnsw-m"), ("ef_construction", "--ef-construction")):
            want, have = getattr(self, name), getattr(made, name)
            if want is not None and have is not None and int(want) != int(have):
                raise InputError(f"{index.dir}: the index was made with {name}={have}, which is fixed when an index "
                                 f"is made; build a new index folder with {flag} {want} (or leave {flag} out)")


# ---------------------------------------------------------------------------------------
# Commit protocol
# ---------------------------------------------------------------------------------------


def _move(src: Path, dst: Path) -> None:
    """One step of a commit (a seam for tests that simulate a crash between renames)."""
    os.replace(src, dst)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish_staging(index_dir: Path) -> None:
    """Move a complete ``.staging/`` generation into place (the last step of a commit)."""
    stage = Path(index_dir) / ".staging"
    for name in FILES:
        with contextlib.suppress(FileNotFoundError):  # a concurrent roll-forward may have moved it
            _move(stage / name, Path(index_dir) / name)
    _fsync_dir(Path(index_dir))
    shutil.rmtree(stage, ignore_errors=True)


def recover(index_dir: Path) -> bool:
    """Finish a commit that was interrupted between renames; drop an incomplete staging.

    Returns ``True`` when a staged generation was rolled forward.
    """
    stage = Path(index_dir) / ".staging"
    if not stage.is_dir():
        return False
    if not (stage / "index.json").is_file():
        shutil.rmtree(stage, ignore_errors=True)
        return False
    _publish_staging(index_dir)
    log.info("%s: finished an interrupted index update", index_dir)
    return True


def _commit(index_dir: Path, meta: dict, items: list[dict], hnsw) -> dict:
    """Write a new generation through ``.staging/`` and move it into place (see module doc)."""
    stage = index_dir / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    hnsw.save_index(str(stage / "index.bin"))
    with open(stage / "index.bin", "rb+") as f:
        os.fsync(f.fileno())
    write_jsonl(stage / "items.jsonl", items)
    meta = dict(meta, generation=int(meta.get("generation", 0)) + 1, count=len(items),
                items_sha256=sha256_file(stage / "items.jsonl"), index_bytes=(stage / "index.bin").stat().st_size)
    write_json(stage / "index.json", meta)
    _publish_staging(index_dir)
    return meta


@contextlib.contextmanager
def writer_lock(index_dir: Path, wait: bool = True):
    """Exclusive lock for writers of ``index_dir`` (released if the process dies).
    Yields ``False`` instead of waiting when ``wait`` is false and the lock is held."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@dataclass
class RefIndex:
    """An opened index folder.

    Attributes:
        dir (`Path`): the folder.
        meta (`dict`): ``index.json``.
        items (`list[dict]`): ``items.jsonl`` records (label, path, sha256, width, height, ...).
        hnsw: the ``hnswlib.Index`` (space cosine), or ``None`` when the index is empty.
    """

    dir: Path
    meta: dict
    items: list[dict]
    hnsw: object

    @property
    def identity(self) -> EmbedderIdentity:
        return EmbedderIdentity.from_json(self.meta["embedder"])

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def graph(self) -> GraphSettings:
        """The hnswlib settings the index was made with, and the ``ef_search`` its queries use."""
        made = self.meta.get("hnsw", {})
        return GraphSettings(made.get("M"), made.get("ef_construction"),
                             int(self.meta.get("ef_search", HNSW_EF_SEARCH)))

    def item_by_label(self, label: int) -> dict:
        if getattr(self, "_by_label", None) is None:
            self._by_label = {it["label"]: it for it in self.items}
        return self._by_label[label]

    def abs_path(self, item: dict) -> Path:
        return resolve_path(self.dir / "index.json", item["path"])

    def check_identity(self, identity: EmbedderIdentity) -> None:
        """Refuse an embedder other than the one that built the index, naming both."""
        if not self.identity.same_as(identity):
            raise InputError(f"{self.dir}: index was built with {self.identity.describe()}, "
                             f"but the query embedder is {identity.describe()}; use the same model or rebuild the index")

    def vectors(self, labels) -> np.ndarray:
        """(n, dim) float32 unit vectors stored for ``labels``."""
        if len(labels) == 0:
            return np.zeros((0, int(self.meta["dim"])), np.float32)
        return np.asarray(self.hnsw.get_items(list(labels)), dtype=np.float32)

    def search(self, vector: np.ndarray, k: int, exclude: set[int] = frozenset(), within: list[int] | None = None):
        """The ``k`` nearest items to a (dim,) unit vector: list of ``(label, cosine)``, best first.

        ``within`` restricts the search to those labels (exact, brute force); ``exclude``
        removes labels (e.g. the query's own source).
        """
        if within is not None:
            labels = [lab for lab in within if lab not in exclude]
            sims = self.vectors(labels) @ vector.astype(np.float32)
            order = np.argsort(-sims, kind="stable")[:k]
            return [(labels[i], float(sims[i])) for i in order]
        k = min(k, self.count - len(exclude))
        if k <= 0 or self.hnsw is None:
            return []
        self.hnsw.set_ef(max(k, self.graph.ef_search))
        flt = (lambda lab: lab not in exclude) if exclude else None
        labels, dists = self.hnsw.knn_query(vector[None].astype(np.float32), k=k, filter=flt)
        return [(int(lab), float(1.0 - d)) for lab, d in zip(labels[0], dists[0])]


# From this many vectors on, loading an index without huge pages says how to get them.
HUGE_PAGES_HINT_AT = 500_000


def _load_hnsw(path: Path, dim: int, count: int):
    import hnswlib

    if count >= HUGE_PAGES_HINT_AT and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("%s: %d vectors; queries run about a quarter faster with huge pages: start the command with "
                 "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35; the same results; docs/match.md)",
                 path.parent, count)
    index = hnswlib.Index(space="cosine", dim=dim)
    index.load_index(str(path), max_elements=max(count, 1))
    return index


def _read_consistent(index_dir: Path) -> RefIndex | None:
    """One attempt at reading a consistent generation; ``None`` if the files disagree."""
    meta = read_json(index_dir / "index.json")
    if meta.get("format") != INDEX_FORMAT:
        raise InputError(f"{index_dir}/index.json: format {meta.get('format')!r} is not {INDEX_FORMAT!r}")
    items_path, bin_path = index_dir / "items.jsonl", index_dir / "index.bin"
    if not items_path.is_file() or sha256_file(items_path) != meta["items_sha256"]:
        return None
    if meta["count"] == 0:
        return RefIndex(index_dir, meta, [], None)
    if not bin_path.is_file() or bin_path.stat().st_size != meta["index_bytes"]:
        return None
    items = [{k: v for k, v in r.items() if k != "_line"} for r in read_jsonl(items_path)]
    return RefIndex(index_dir, meta, items, _load_hnsw(bin_path, int(meta["dim"]), int(meta["next_label"])))


def open_index(index_dir: str | os.PathLike) -> RefIndex:
    """Open an index folder for reading, finishing an interrupted commit if one is found.

    Raises:
        InputError: no index there, a foreign format, or files of mixed generations
            that no staged commit explains.
    """
    index_dir = Path(index_dir)
    if not (index_dir / "index.json").is_file() and not (index_dir / ".staging" / "index.json").is_file():
        raise InputError(f"{index_dir}: not a refsr index (no index.json); build one with `refsr index-refs`")
    for attempt in range(5):
        recover(index_dir) if (index_dir / ".staging" / "index.json").is_file() else None
        index = _read_consistent(index_dir)
        if index is not None:
            return index
        time.sleep(0.05 * (attempt + 1))  # a writer may be between two renames
    raise InputError(f"{index_dir}: index files do not match index.json (damaged?); rebuild with `refsr index-refs`")


def index_info(index_dir: str | os.PathLike) -> dict:
    """Count, model, dimension, size on disk (bytes), generation and pending parts of an index."""
    index = open_index(index_dir)
    d = Path(index_dir)
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    parts = sorted(p.name for p in (d / "parts").glob("*.npz")) if (d / "parts").is_dir() else []
    graph = index.graph
    return {"count": index.count, "model": index.identity.describe(), "dim": index.identity.dim,
            "bytes": size, "generation": index.meta["generation"], "pending_parts": parts,
            "M": graph.M, "ef_construction": graph.ef_construction, "ef_search": graph.ef_search}


# ---------------------------------------------------------------------------------------
# Embedding parts
# ---------------------------------------------------------------------------------------


def _save_part(path: Path, identity: EmbedderIdentity, items: list[dict], vectors: np.ndarray) -> None:
    """An embedding part: (n, dim) float32 vectors with their item records and embedder."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        np.savez(tmp, vectors=np.asarray(vectors, np.float32).reshape(len(items), identity.dim),
                 items=np.array(json.dumps(items)), embedder=np.array(json.dumps(identity.to_json())),
                 format=np.array(PART_FORMAT))


def _load_part(path: Path) -> tuple[EmbedderIdentity, list[dict], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != PART_FORMAT:
                raise InputError(f"{path}: not an embedding part ({PART_FORMAT})")
            return (EmbedderIdentity.from_json(json.loads(str(z["embedder"]))),
                    json.loads(str(z["items"])), np.asarray(z["vectors"], np.float32))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: unreadable embedding part ({e}); delete it and rerun") from None


def load_parts(index_dir: Path, identity: EmbedderIdentity | None = None):
    """All parts of ``index_dir/parts``: ``(files, identity, items, vectors)``.

    Raises:
        InputError: parts made by different embedders (or another than ``identity``).
    """
    files = sorted((index_dir / "parts").glob("*.npz")) if (index_dir / "parts").is_dir() else []
    items, vecs = [], []
    for f in files:
        ident, its, v = _load_part(f)
        if identity is None:
            identity = ident
        elif not identity.same_as(ident):
            raise InputError(f"{f}: embedded with {ident.describe()}, but the index uses {identity.describe()}")
        items.extend(its)
        vecs.append(v)
    dim = identity.dim if identity else 0
    return files, identity, items, (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32))


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


@dataclass
class IndexStats:
    """What an ``index-refs`` run did."""

    index_dir: Path
    count: int = 0
    embedded: int = 0
    reused: int = 0
    added: int = 0
    replaced: int = 0
    pruned: int = 0
    built: bool = False


def _new_hnsw(dim: int, capacity: int, M: int, ef_construction: int):
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=max(capacity, 1), M=M, ef_construction=ef_construction, random_seed=100)
    return index


def _plan_merge(index: RefIndex | None, part_items: list[dict], prune: bool):
    """Decide which part items to add and which index labels to drop (replaced or pruned)."""
    current = {it["path"]: it for it in (index.items if index else [])}
    adds, seen = {}, set()
    for i, it in enumerate(part_items):
        old = current.get(it["path"])
        if it["path"] in seen or (old is not None and old["sha256"] == it["sha256"]):
            continue
        seen.add(it["path"])
        adds[it["path"]] = i
    replaced = [current[p]["label"] for p in adds if p in current]
    pruned = [it["label"] for it in (index.items if index else [])
              if prune and it["path"] not in adds and not index.abs_path(it).is_file()]
    return [adds[p] for p in sorted(adds)], replaced, pruned


def build_index(index_dir: str | os.PathLike, prune: bool = False, stats: IndexStats | None = None,
                graph: GraphSettings = GraphSettings()) -> IndexStats:
    """Merge every embedding part of ``index_dir/parts`` into the index and commit it.

    New paths are added, a path whose content changed is replaced, and with ``prune``
    items whose files are gone are dropped. The hnswlib index grows with ``resize_index``.
    Consumed parts are deleted after the commit. ``graph`` sets the hnswlib settings of a new
    index, and ``ef_search`` of an existing one.

    Raises:
        InputError: nothing to build, or ``graph`` asks for another M/ef_construction than
            the existing index was made with.
    """
    index_dir = Path(index_dir)
    stats = stats or IndexStats(index_dir)
    with writer_lock(index_dir):
        recover(index_dir)
        index = open_index(index_dir) if (index_dir / "index.json").is_file() else None
        if index is not None:
            graph.check_against(index)
        files, identity, part_items, vectors = load_parts(index_dir, index.identity if index else None)
        if identity is None:
            raise InputError(f"{index_dir}: nothing to build (no index and no embedding parts)")
        adds, replaced, pruned = _plan_merge(index, part_items, prune)
        stats.added, stats.replaced, stats.pruned = len(adds), len(replaced), len(pruned)
        new_ef = index is not None and graph.ef_search is not None and int(graph.ef_search) != index.graph.ef_search
        if adds or replaced or pruned or index is None or new_ef:
            _apply_and_commit(index_dir, index, identity, part_items, vectors, adds, set(replaced) | set(pruned), graph)
            stats.built = True
        for f in files:
            f.unlink(missing_ok=True)
        stats.count = open_index(index_dir).count
    return stats


def _apply_and_commit(index_dir, index, identity, part_items, vectors, adds, drop, graph: GraphSettings) -> None:
    """Add ``adds`` (positions in ``part_items``) with fresh labels, mark ``drop`` deleted, commit."""
    next_label = int(index.meta["next_label"]) if index else 0
    made = index.graph if index else GraphSettings()
    M = int(made.M or graph.M or HNSW_M)
    ef_construction = int(made.ef_construction or graph.ef_construction or HNSW_EF_CONSTRUCTION)
    hnsw = index.hnsw if index and index.hnsw is not None else None
    if hnsw is None:
        hnsw = _new_hnsw(identity.dim, next_label + len(adds), M, ef_construction)
    elif hnsw.get_max_elements() < next_label + len(adds):
        hnsw.resize_index(next_label + len(adds))
    new_items = []
    for j, pos in enumerate(adds):
        new_items.append(dict(part_items[pos], label=next_label + j))
    if adds:
        hnsw.add_items(vectors[adds], np.arange(next_label, next_label + len(adds)))
    for label in drop:
        hnsw.mark_deleted(label)
    items = [it for it in (index.items if index else []) if it["label"] not in drop] + new_items
    meta = dict(index.meta) if index else {
        "format": INDEX_FORMAT, "space": "cosine", "dim": identity.dim, "embedder": identity.to_json(),
        "model": identity.model, "pretrained": identity.pretrained, "weights_sha256": identity.weights_sha256,
        "hnsw": {"M": M, "ef_construction": ef_construction}, "ef_search": HNSW_EF_SEARCH, "generation": 0}
    if graph.ef_search is not None:
        meta["ef_search"] = int(graph.ef_search)
    meta["next_label"] = next_label + len(adds)
    _commit(index_dir, meta, items, hnsw)


# ---------------------------------------------------------------------------------------
# Embedding phase (index-refs)
# ---------------------------------------------------------------------------------------


def _describe_files(index_dir: Path, paths, index: RefIndex | None) -> list[dict]:
    """Item records (path relative to the index, sha256, bytes, mtime_ns) for ``paths``;
    a file whose size and mtime match the index keeps its recorded sha256 (no re-hash)."""
    from ..progress import progress

    known = {it["path"]: it for it in (index.items if index else [])}
    records = []
    for p in progress(paths, desc="hashing", unit="file"):
        st = Path(p).stat()
        rel = relative_path(index_dir / "index.json", p)
        old = known.get(rel)
        if old and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            sha = old["sha256"]
        else:
            sha = sha256_file(p)
        records.append({"path": rel, "sha256": sha, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return records


def _known_vectors(index: RefIndex | None, part_items, part_vectors) -> dict[str, tuple[np.ndarray, int, int]]:
    """sha256 -> (vector, width, height) for everything already embedded (index and parts)."""
    known = {}
    for it, v in zip(part_items, part_vectors):
        known[it["sha256"]] = (v, it["width"], it["height"])
    if index is not None and index.count:
        first = {}
        for it in index.items:
            first.setdefault(it["sha256"], it)
        vecs = index.vectors([it["label"] for it in first.values()])
        for it, v in zip(first.values(), vecs):
            known[it["sha256"]] = (v, it["width"], it["height"])
    return known


def index_refs(
    inputs, index_dir: str | os.PathLike, spec, batch_size: int = 64, workers: int = 2, device: str = "cpu",
    prune: bool = False, shard: tuple[int, int] = (0, 1), recursive: bool = True, flush_every: int = 1024,
    flush_seconds: float = 30.0, graph: GraphSettings = GraphSettings(),
) -> IndexStats:
    """Embed the images of ``inputs`` into the index at ``index_dir`` (created if absent).

    Only files whose sha256 is not yet embedded (in the index or in a part left by an
    interrupted run) go through the model. Embeddings are saved to
    ``parts/part-K-of-N.chunk-*.npz`` every ``flush_every`` images or ``flush_seconds``
    seconds, whichever comes first (an interruption loses at most that much work), then to
    ``parts/part-K-of-N.npz``; an unsharded run (and the last shard to finish) then merges
    the parts into the index with :func:`build_index`.

    Args:
        inputs: image files and folders.
        spec (`EmbedderSpec`): the OpenCLIP model to use.
        shard (`tuple[int, int]`): ``(K, N)``: embed every N-th file starting at K.
        graph (`GraphSettings`): hnswlib settings, applied by whichever run builds the index.

    Raises:
        InputError: unreadable images, an index/parts built with another embedder, or
            ``graph`` settings that an existing index was not made with.
        MissingWeightsError: pretrained weights not available offline.
    """
    from ..io import list_images, select_shard
    from .embed import Embedder

    index_dir = Path(index_dir)
    k, n = shard
    paths = select_shard(list_images(inputs, recursive=recursive), (k, n))
    index_dir.mkdir(parents=True, exist_ok=True)
    with writer_lock(index_dir):
        recover(index_dir)
        index = open_index(index_dir) if (index_dir / "index.json").is_file() else None
    if index is not None:
        graph.check_against(index)  # before any embedding work
    embedder = Embedder(spec, device=device)
    if index is not None:
        index.check_identity(embedder.identity)
    _, _, part_items, part_vectors = load_parts(index_dir, embedder.identity)
    stats = IndexStats(index_dir)
    records = _describe_files(index_dir, paths, index)
    new_items, new_vecs = _embed_missing(embedder, index_dir, records, index, part_items, part_vectors,
                                         f"part-{k}-of-{n}", batch_size, workers, (flush_every, flush_seconds),
                                         stats)
    prefix = f"part-{k}-of-{n}"
    if new_items:
        _save_part(index_dir / "parts" / f"{prefix}.npz", embedder.identity, new_items, np.stack(new_vecs))
    for chunk in (index_dir / "parts").glob(f"{prefix}.chunk-*.npz"):
        chunk.unlink(missing_ok=True)
    if n == 1 or all((index_dir / "parts" / f"part-{i}-of-{n}.npz").is_file() for i in range(n)):
        build_index(index_dir, prune=prune, stats=stats, graph=graph)
    stats.count = stats.count or (index.count if index else 0)
    return stats


def _embed_missing(embedder, index_dir, records, index, part_items, part_vectors, prefix,
                   batch_size, workers, flush, stats):
    """Item records + vectors for every record not already in the index at its path;
    embeds only unknown sha256s, flushing chunks to ``parts/`` as it goes (``flush``:
    every so many images or seconds)."""
    import time

    from .embed import embed_files

    flush_every, flush_seconds = flush
    last_flush = time.monotonic()

    current = {(it["path"], it["sha256"]) for it in (index.items if index else [])}
    todo = [r for r in records if (r["path"], r["sha256"]) not in current]
    known = _known_vectors(index, part_items, part_vectors)
    items, vecs = [], []
    for r in todo:
        if r["sha256"] in known:
            v, w, h = known[r["sha256"]]
            items.append(dict(r, width=w, height=h))
            vecs.append(v)
            stats.reused += 1
    missing = list({r["sha256"]: r for r in todo if r["sha256"] not in known}.values())
    paths = [resolve_path(index_dir / "index.json", r["path"]) for r in missing]
    pending_items, pending_vecs = [], []
    for pos, batch, sizes in embed_files(embedder, paths, batch_size, workers):
        for p, v, (w, h) in zip(pos, batch, sizes):
            pending_items.append(dict(missing[p], width=w, height=h))
            pending_vecs.append(v)
        stats.embedded += len(pos)
        if len(pending_items) >= flush_every or time.monotonic() - last_flush >= flush_seconds:
            _flush_chunk(index_dir, prefix, embedder.identity, pending_items, pending_vecs)
            items += pending_items
            vecs += pending_vecs
            pending_items, pending_vecs, last_flush = [], [], time.monotonic()
    _flush_chunk(index_dir, prefix, embedder.identity, pending_items, pending_vecs)
    items, vecs = items + pending_items, vecs + pending_vecs
    by_sha = {it["sha256"]: (it, v) for it, v in zip(items, vecs)}  # duplicates of embedded files
    for r in todo:
        if r["sha256"] not in known and r["path"] != by_sha[r["sha256"]][0]["path"]:
            it, v = by_sha[r["sha256"]]
            items.append(dict(r, width=it["width"], height=it["height"]))
            vecs.append(v)
    return items, vecs


def _flush_chunk(index_dir, prefix, identity, items, vecs) -> None:
    if items:
        _save_part(index_dir / "parts" / f"{prefix}.chunk-{items[0]['sha256'][:16]}.npz", identity, items, np.stack(vecs))
