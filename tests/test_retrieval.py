"""Reference retrieval: index folder, incremental/crash-safe updates, patch matcher, match stage.

Everything runs with a tiny random OpenCLIP ViT (tests/data/tiny-clip-vit.json) and a
random ResNet-34 trunk, on small scikit-image photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from refsr.errors import InputError, MissingWeightsError
from refsr.io import read_matches, sha256_file, write_image, write_jsonl
from refsr.models.matcher import load_matcher
from refsr.retrieval import index as index_mod
from refsr.retrieval.embed import Embedder, EmbedderSpec
from refsr.retrieval.index import build_index, index_info, index_refs, open_index
from refsr.retrieval.match import (MatchSettings, match_queries, merge_matches, nms, pooled_window_features,
                                   score_windows, window_boxes)

TINY = str(Path(__file__).parent / "data" / "tiny-clip-vit.json")
SPEC = EmbedderSpec(TINY, None)
from conftest import small_photo  # noqa: E402

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "horse"]


@pytest.fixture(scope="module")
def pixels():
    return {n: small_photo(n) for n in PHOTOS}


@pytest.fixture
def refs(tmp_path, pixels) -> Path:
    folder = tmp_path / "refs"
    for n in PHOTOS[:4]:
        write_image(folder / f"{n}.png", pixels[n])
    return folder


def _items(index_dir):
    ix = open_index(index_dir)
    vecs = ix.vectors([it["label"] for it in ix.items])
    return {it["path"]: (it["sha256"], it["width"], it["height"], v) for it, v in zip(ix.items, vecs)}


class CountingEmbed:
    """Wraps Embedder.embed to count images, optionally interrupting after some calls."""

    def __init__(self, monkeypatch, stop_after=None):
        self.images, self.calls, self.stop_after = 0, 0, stop_after
        original = Embedder.embed

        def embed(this, images):
            if self.stop_after is not None and self.calls >= self.stop_after:
                raise KeyboardInterrupt
            self.calls += 1
            self.images += len(images)
            return original(this, images)

        monkeypatch.setattr(Embedder, "embed", embed)


# ---------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------


def test_index_round_trip(refs, tmp_path):
    stats = index_refs([refs], tmp_path / "idx", SPEC)
    ix = open_index(tmp_path / "idx")
    assert stats.embedded == 4 and ix.count == 4
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["format"] == "refsr.index/1" and meta["space"] == "cosine" and meta["dim"] == 32
    assert meta["model"] == "tiny-clip-vit" and meta["pretrained"] is None and meta["count"] == 4
    for it in ix.items:
        path = ix.abs_path(it)
        assert it["sha256"] == sha256_file(path) and (it["width"], it["height"]) == (128, 96)
    vecs = ix.vectors([it["label"] for it in ix.items])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the stored vectors are the embedder's output for each file
    from refsr.io import read_rgb

    direct = Embedder(SPEC).embed([read_rgb(ix.abs_path(it)) for it in ix.items])
    np.testing.assert_allclose(vecs, direct, atol=1e-5)
    info = index_info(tmp_path / "idx")
    assert info["count"] == 4 and info["dim"] == 32 and info["bytes"] > 0 and "tiny-clip-vit" in info["model"]


def test_graph_settings_fixed_at_creation_ef_search_changeable(refs, tmp_path):
    from refsr.retrieval.index import GraphSettings

    idx = tmp_path / "idx"
    index_refs([refs], idx, SPEC, graph=GraphSettings(M=8, ef_construction=40, ef_search=12))
    ix = open_index(idx)
    assert ix.meta["hnsw"] == {"M": 8, "ef_construction": 40} and ix.meta["ef_search"] == 12
    assert (ix.hnsw.M, ix.hnsw.ef_construction) == (8, 40)  # the graph itself, not only the record
    ix.search(ix.vectors([0])[0], 3)
    assert ix.hnsw.ef == 12
    # M and ef_construction cannot change on an existing index: refused before any embedding
    with pytest.raises(InputError, match=r"made with M=8.*new index folder with --hnsw-m 16"):
        index_refs([refs], idx, SPEC, graph=GraphSettings(M=16))
    with pytest.raises(InputError, match=r"ef_construction=40.*--ef-construction 200"):
        build_index(idx, graph=GraphSettings(ef_construction=200))
    # ef_search can: a merge with nothing new commits a new generation with it
    generation = ix.meta["generation"]
    stats = build_index(idx, graph=GraphSettings(M=8, ef_search=30))
    ix = open_index(idx)
    assert stats.built and ix.meta["ef_search"] == 30 and ix.meta["generation"] == generation + 1
    assert (ix.hnsw.M, ix.count) == (8, 4)
    ix.search(ix.vectors([0])[0], 3)
    assert ix.hnsw.ef == 30
    info = index_info(idx)
    assert (info["M"], info["ef_construction"], info["ef_search"]) == (8, 40, 30)
    # a new index takes the defaults
    index_refs([refs], tmp_path / "default", SPEC)
    meta = open_index(tmp_path / "default").meta
    assert meta["hnsw"] == {"M": 16, "ef_construction": 200} and meta["ef_search"] == 256


def test_a_large_index_without_huge_pages_says_how_to_get_them(refs, tmp_path, monkeypatch, caplog):
    index_refs([refs], tmp_path / "idx", SPEC)
    monkeypatch.setattr(index_mod, "HUGE_PAGES_HINT_AT", 4)  # this index counts as large
    for tunables, hinted in (("", True), ("glibc.malloc.hugetlb=1", False)):
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
        caplog.clear()
        with caplog.at_level("INFO", logger="refsr"):
            open_index(tmp_path / "idx")
        assert any("GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in r.getMessage() for r in caplog.records) is hinted
    monkeypatch.setattr(index_mod, "HUGE_PAGES_HINT_AT", 5)  # one more than it holds: quiet
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    caplog.clear()
    with caplog.at_level("INFO", logger="refsr"):
        open_index(tmp_path / "idx")
    assert not any("huge pages" in r.getMessage() for r in caplog.records)


def test_exact_duplicate_is_top1(refs, tmp_path):
    from refsr.io import read_rgb

    index_refs([refs], tmp_path / "idx", SPEC)
    ix = open_index(tmp_path / "idx")
    dup = tmp_path / "elsewhere" / "copy.png"
    dup.parent.mkdir()
    shutil.copy(refs / "chelsea.png", dup)
    vec = Embedder.__new__(Embedder)  # not used; keep the real path below
    vec = Embedder(Embedder.spec_for(ix.identity)).embed([read_rgb(dup)])[0]
    (label, score), *_ = ix.search(vec, 3)
    assert ix.item_by_label(label)["path"].endswith("chelsea.png") and score > 0.999


def test_incremental_rerun_and_prune(refs, tmp_path, pixels, monkeypatch):
    index_refs([refs], tmp_path / "idx", SPEC)
    labels_before = {p: v[0] for p, v in _items(tmp_path / "idx").items()}
    counter = CountingEmbed(monkeypatch)
    stats = index_refs([refs], tmp_path / "idx", SPEC)
    assert counter.images == 0 and stats.embedded == 0 and not stats.built
    write_image(refs / "camera.png", pixels["camera"])
    write_image(refs / "horse.png", pixels["horse"])
    stats = index_refs([refs], tmp_path / "idx", SPEC)
    assert counter.images == 2 and stats.embedded == 2 and stats.added == 2
    after = _items(tmp_path / "idx")
    assert len(after) == 6 and all(after[p][0] == sha for p, sha in labels_before.items())
    (refs / "coffee.png").unlink()
    stats = index_refs([refs], tmp_path / "idx", SPEC, prune=True)
    assert stats.pruned == 1 and counter.images == 2
    assert not any(p.endswith("coffee.png") for p in _items(tmp_path / "idx"))
    # the index grew past its initial capacity and still answers
    ix = open_index(tmp_path / "idx")
    assert ix.hnsw.get_max_elements() >= 6 and len(ix.search(ix.vectors([0])[0], 5)) == 5


def test_interrupted_embedding_resumes_without_reembedding(refs, tmp_path, pixels, monkeypatch):
    index_refs([refs], tmp_path / "idx", SPEC)
    for n in ("camera", "horse"):
        write_image(refs / f"{n}.png", pixels[n])
    write_image(refs / "more.png", pixels["astronaut"][::-1].copy())
    interrupt = CountingEmbed(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        index_refs([refs], tmp_path / "idx", SPEC, batch_size=1, flush_every=1)
    assert open_index(tmp_path / "idx").count == 4  # the last complete index still loads
    assert len(list((tmp_path / "idx" / "parts").glob("*.chunk-*.npz"))) == 2
    monkeypatch.undo()
    counter = CountingEmbed(monkeypatch)
    stats = index_refs([refs], tmp_path / "idx", SPEC, batch_size=1, flush_every=1)
    assert counter.images == 1 and stats.reused == 2 and open_index(tmp_path / "idx").count == 7
    assert not list((tmp_path / "idx" / "parts").glob("*.npz"))


def test_crash_between_renames_rolls_forward(refs, tmp_path, pixels, monkeypatch):
    index_refs([refs], tmp_path / "idx", SPEC)
    write_image(refs / "camera.png", pixels["camera"])
    real_move, moves = index_mod._move, []

    def crashing_move(src, dst):
        if moves:
            raise KeyboardInterrupt  # killed after index.bin was replaced
        moves.append(src.name)
        real_move(src, dst)

    monkeypatch.setattr(index_mod, "_move", crashing_move)
    with pytest.raises(KeyboardInterrupt):
        index_refs([refs], tmp_path / "idx", SPEC)
    assert moves == ["index.bin"]
    monkeypatch.setattr(index_mod, "_move", real_move)
    ix = open_index(tmp_path / "idx")  # finds a complete staging folder and finishes it
    assert ix.count == 5 and ix.meta["generation"] == 2 and not (tmp_path / "idx" / ".staging").exists()


def test_crash_before_staging_complete_keeps_previous(refs, tmp_path, pixels, monkeypatch):
    index_refs([refs], tmp_path / "idx", SPEC)
    write_image(refs / "camera.png", pixels["camera"])

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_mod, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        index_refs([refs], tmp_path / "idx", SPEC)
    monkeypatch.undo()
    ix = open_index(tmp_path / "idx")
    assert ix.count == 4 and ix.meta["generation"] == 1
    assert index_refs([refs], tmp_path / "idx", SPEC).count == 5


def test_mixed_generations_are_detected(refs, tmp_path):
    index_refs([refs], tmp_path / "idx", SPEC)
    with open(tmp_path / "idx" / "items.jsonl", "a") as f:
        f.write('{"label": 99, "path": "x.png", "sha256": "0", "width": 1, "height": 1}\n')
    with pytest.raises(InputError, match="do not match index.json"):
        open_index(tmp_path / "idx")


def test_model_mismatch_refused(refs, tmp_path):
    index_refs([refs], tmp_path / "idx", SPEC)
    other = json.loads(Path(TINY).read_text())
    other["embed_dim"] = 16
    (tmp_path / "other-clip.json").write_text(json.dumps(other))
    spec = EmbedderSpec(str(tmp_path / "other-clip.json"), None)
    with pytest.raises(InputError, match=r"tiny-clip-vit \(pretrained none, dim 32\).*other-clip \(pretrained none, dim 16\)"):
        index_refs([refs], tmp_path / "idx", spec)
    with pytest.raises(InputError, match="dim 32.*dim 16"):
        match_queries(refs, tmp_path / "idx", tmp_path / "m.jsonl", matcher="none", embedder_spec=spec)


def test_missing_pretrained_weights_one_line():
    with pytest.raises(MissingWeightsError) as e:
        Embedder(EmbedderSpec("ViT-B-32", "laion2b_s34b_b79k"))
    msg = str(e.value)
    assert "\n" not in msg and "open_clip_model.safetensors" in msg and "--weights" in msg
    with pytest.raises(InputError, match="unknown pretrained tag"):
        Embedder(EmbedderSpec("ViT-B-32", "no-such-tag"))


def test_weights_file_loads_into_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    import open_clip

    cfg = json.loads(Path(TINY).read_text())
    torch.manual_seed(123)
    model = open_clip.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    emb = Embedder(EmbedderSpec(TINY, None, str(tmp_path / "w.safetensors")))
    x = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.visual(torch.from_numpy(emb.preprocess(x))[None]), dim=-1)
    np.testing.assert_allclose(emb.embed([x])[0], want[0].numpy(), atol=1e-5)
    assert emb.identity.weights_sha256 == sha256_file(tmp_path / "w.safetensors")
    assert not emb.identity.same_as(Embedder(SPEC).identity)


def test_sharded_index_equals_unsharded(refs, tmp_path, pixels):
    for n in ("camera", "horse"):
        write_image(refs / f"{n}.png", pixels[n])
    index_refs([refs], tmp_path / "whole", SPEC)
    s0 = index_refs([refs], tmp_path / "sharded", SPEC, shard=(0, 2))
    assert not s0.built and (tmp_path / "sharded" / "parts" / "part-0-of-2.npz").is_file()
    s1 = index_refs([refs], tmp_path / "sharded", SPEC, shard=(1, 2))
    assert s1.built  # the last shard builds automatically
    whole, sharded = _items(tmp_path / "whole"), _items(tmp_path / "sharded")
    assert whole.keys() == sharded.keys() and len(whole) == 6
    for p in whole:
        assert whole[p][:3] == sharded[p][:3]
        np.testing.assert_allclose(whole[p][3], sharded[p][3], atol=1e-6)
    # merging again is harmless once the parts are consumed (`refsr index-refs --merge`, as every sharded stage)
    assert build_index(tmp_path / "sharded").count == 6
    from click.testing import CliRunner

    from refsr_cli.main import cli

    r = CliRunner().invoke(cli, ["index-refs", "--merge", "--index", str(tmp_path / "sharded")])
    assert r.exit_code == 0 and "6 images (+0 added" in r.output, r.output


# ---------------------------------------------------------------------------------------
# Windows and matcher
# ---------------------------------------------------------------------------------------


def test_window_boxes_inside_image_and_small_images():
    boxes = window_boxes(200, 130, 64, 32)
    assert (boxes[:, 0] + boxes[:, 2] <= 200).all() and (boxes[:, 1] + boxes[:, 3] <= 130).all()
    assert {tuple(b) for b in boxes} >= {(0, 0, 64, 64), (136, 66, 64, 64), (128, 64, 64, 64)}
    assert window_boxes(40, 30, 64, 32).tolist() == [[0, 0, 40, 30]]


def test_pooled_window_features_equal_direct_mean():
    rng = np.random.default_rng(0)
    fmap = rng.random((5, 8, 12), dtype=np.float32)
    boxes = np.array([[0, 0, 64, 64], [32, 16, 64, 48], [0, 0, 192, 128]])
    got = pooled_window_features(fmap, boxes, 16)
    np.testing.assert_allclose(got[0], fmap[:, 0:4, 0:4].mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(got[1], fmap[:, 1:4, 2:6].mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(got[2], fmap.mean((1, 2)), rtol=1e-5)


def test_nms_suppresses_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 10, 10], [5, 0, 10, 10]])
    assert nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), iou=0.5) == [0, 2, 3]
    assert nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), iou=0.5, keep=2) == [0, 2]


@pytest.mark.parametrize("name", ["astronaut"])
def test_crop_found_at_exact_box(name):
    from refsr.retrieval.match import feature_map

    net = load_matcher("none")
    image = small_photo(name, (192, 128))
    fmap = feature_map(net, image, "cpu")
    for y in range(0, 65, 32):
        for x in range(0, 129, 32):  # every stride-aligned window
            qfeat = feature_map(net, image[y:y + 64, x:x + 64], "cpu").mean((1, 2))
            boxes, scores = score_windows(qfeat, fmap, net.stride, 192, 128, 64, 32, keep=5)
            assert boxes[0].tolist() == [x, y, 64, 64] and scores[0] == scores.max()


def test_matcher_folder_round_trip(tmp_path):
    import torch

    net = load_matcher("none")
    net.save_pretrained(tmp_path / "matcher")
    again = load_matcher(str(tmp_path / "matcher"))
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(net(x), again(x))
    assert net(x).shape == (1, 256, 4, 3) and net.stride == 16
    with pytest.raises(MissingWeightsError, match="resnet34-b627a593.pth"):
        load_matcher("imagenet")
    with pytest.raises(InputError, match="expected shipped, imagenet, none, or a matcher folder"):
        load_matcher("no-such-matcher")


# ---------------------------------------------------------------------------------------
# The match stage
# ---------------------------------------------------------------------------------------

SETTINGS = dict(top_images=4, top_refs=5, patch=64, stride=32)


def test_match_finds_crop_and_excludes_self(refs, tmp_path, pixels):
    index_refs([refs], tmp_path / "idx", SPEC)
    queries = tmp_path / "queries"
    big = small_photo("astronaut", (192, 128))
    write_image(refs / "big.png", big)
    index_refs([refs], tmp_path / "idx", SPEC)
    write_image(queries / "crop.png", big[32:96, 64:128])
    shutil.copy(refs / "coffee.png", queries / "coffee_dup.png")  # same bytes as an indexed image
    out = tmp_path / "out" / "matches.jsonl"
    match_queries(queries, tmp_path / "idx", out, MatchSettings(**SETTINGS), matcher="none",
                  save_crops=tmp_path / "crops")
    recs = {r["id"]: r for r in read_matches(out)}
    crop_refs = recs["crop"]["refs"]
    assert crop_refs[0]["path"] == "../refs/big.png" and crop_refs[0]["box"] == [64, 32, 64, 64]
    assert crop_refs[0]["score"] == max(r["score"] for r in crop_refs)
    assert all(r["path"] != "../refs/coffee.png" for r in recs["coffee_dup"]["refs"])  # same sha256
    assert recs["crop"]["matcher"] == "none" and recs["crop"]["format"] == "refsr.matches/1"
    assert len(crop_refs) == 5 and all(a["score"] >= b["score"] for a, b in zip(crop_refs, crop_refs[1:]))
    saved = cv2.imread(str(tmp_path / "crops" / "crop" / "00.png"))
    assert saved.shape == (64, 64, 3)
    # the folder itself as queries: nobody gets its own image
    out2 = tmp_path / "self.jsonl"
    match_queries(refs, tmp_path / "idx", out2, MatchSettings(**SETTINGS), matcher="none")
    for r in read_matches(out2):
        assert all(Path(ref["abs_path"]).resolve() != (refs / f"{r['id']}.png").resolve() for ref in r["refs"])


def test_match_runs_the_matcher_channels_last_on_the_cpu_with_the_same_matches(refs, tmp_path, monkeypatch):
    """On the CPU the patch matcher runs channels-last (oneDNN's faster layout,
    ``refsr.device.prefer_channels_last``): the same fragments in the same order as the default
    layout, the scores equal up to float rounding."""
    import refsr.device

    index_refs([refs], tmp_path / "idx", SPEC)
    write_image(tmp_path / "queries" / "crop.png", small_photo("astronaut", (192, 128))[32:96, 64:128])
    real, seen = refsr.device.prefer_channels_last, []

    def spy(model):
        out = real(model)
        seen.append(next(p for p in out.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last))
        return out

    runs = {}
    for name, fn in (("nhwc", spy), ("nchw", lambda model: model)):
        monkeypatch.setattr(refsr.device, "prefer_channels_last", fn)
        match_queries(tmp_path / "queries", tmp_path / "idx", tmp_path / f"{name}.jsonl", MatchSettings(**SETTINGS),
                      matcher="none")
        runs[name] = read_matches(tmp_path / f"{name}.jsonl")[0]["refs"]
    assert seen == [True]
    assert [(r["path"], r["box"]) for r in runs["nhwc"]] == [(r["path"], r["box"]) for r in runs["nchw"]]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(runs["nhwc"], runs["nchw"]))


def _manifest(tmp_path, pixels, sources: dict[str, Path]) -> Path:
    pairs = tmp_path / "pairs"
    records = []
    for i, (pid, src) in enumerate(sources.items()):
        hr = cv2.imread(str(src))[:, :, ::-1].astype(np.float32)[:64, :64] / 255
        write_image(pairs / "hr" / f"{pid}.png", hr)
        write_image(pairs / "lr" / f"{pid}.png", cv2.resize(hr, (16, 16), interpolation=cv2.INTER_AREA))
        records.append({"id": pid, "hr": f"hr/{pid}.png", "lr": f"lr/{pid}.png", "scale": 4,
                        "source": str(Path("..") / src.relative_to(tmp_path)), "crop": [0, 0, 64, 64], "seed": i,
                        "degradation": {}})
    write_jsonl(pairs / "manifest.jsonl", records)
    return pairs / "manifest.jsonl"


def test_manifest_queries_group_by_parent_and_lr(tmp_path, pixels):
    for group, names in {"a": ["astronaut", "coffee", "chelsea"], "b": ["rocket", "camera", "horse"]}.items():
        for n in names:
            write_image(tmp_path / "refs" / group / f"{n}.png", pixels[n])
    index_refs([tmp_path / "refs"], tmp_path / "idx", SPEC)
    manifest = _manifest(tmp_path, pixels, {"p0": tmp_path / "refs/a/astronaut.png",
                                            "p1": tmp_path / "refs/b/horse.png"})
    out = tmp_path / "m.jsonl"
    match_queries(manifest, tmp_path / "idx", out, MatchSettings(**SETTINGS, group_by="parent"), matcher="none")
    recs = {r["id"]: r for r in read_matches(out)}
    assert {Path(r["path"]).parent.name for r in recs["p0"]["refs"]} == {"a"}
    assert {Path(r["path"]).parent.name for r in recs["p1"]["refs"]} == {"b"}
    assert not any(r["path"].endswith("astronaut.png") for r in recs["p0"]["refs"])  # its source
    assert not any(r["path"].endswith("horse.png") for r in recs["p1"]["refs"])
    assert recs["p0"]["query"] == "pairs/hr/p0.png"
    lr_out = tmp_path / "lr.jsonl"
    match_queries(manifest, tmp_path / "idx", lr_out, MatchSettings(**SETTINGS), query_kind="lr", matcher="none")
    recs = {r["id"]: r for r in read_matches(lr_out)}
    assert recs["p0"]["query"] == "pairs/lr/p0.png"
    assert not any(r["path"].endswith("a/astronaut.png") for r in recs["p0"]["refs"])


def test_sharded_match_equals_unsharded_and_resume(refs, tmp_path, pixels):
    index_refs([refs], tmp_path / "idx", SPEC)
    queries = tmp_path / "q"
    for n in ("camera", "horse", "astronaut"):
        write_image(queries / f"{n}.png", pixels[n][:80, :96])
    settings = MatchSettings(**dict(SETTINGS, top_images=2))
    whole, sharded = tmp_path / "whole" / "m.jsonl", tmp_path / "sharded" / "m.jsonl"
    match_queries(queries, tmp_path / "idx", whole, settings, matcher="none")
    for k in range(2):
        s = match_queries(queries, tmp_path / "idx", sharded, settings, matcher="none", shard=(k, 2))
        assert s.output.name == f"m.shard-{k}-of-2.jsonl" and s.merged == (k == 1)  # the last shard merges
    assert sharded.read_bytes() == whole.read_bytes()  # the lines of one run, in its order: no `cat`
    # merging again (explicitly, or a shard rerun) gives the same bytes; a missing part is named
    sharded.unlink()
    assert match_queries(queries, tmp_path / "idx", sharded, settings, matcher="none", shard=(0, 2)).merged
    assert merge_matches(sharded) == sharded and sharded.read_bytes() == whole.read_bytes()
    from click.testing import CliRunner

    from refsr_cli.main import cli

    sharded.unlink()
    r = CliRunner().invoke(cli, ["match", "--merge", "-o", str(sharded)])
    assert r.exit_code == 0 and sharded.read_bytes() == whole.read_bytes(), r.output
    (tmp_path / "sharded" / "m.shard-1-of-2.jsonl").unlink()
    with pytest.raises(InputError, match=r"m.jsonl: cannot merge, missing m.shard-1-of-2.jsonl$"):
        merge_matches(sharded)
    # resume: a partial file's finished queries are not redone, and an existing output is kept
    lines = whole.read_text().splitlines()
    partial = whole.parent / ".again.jsonl.partial"
    partial.write_text(lines[0] + "\n" + lines[1][:20])  # one finished line, one torn
    s = match_queries(queries, tmp_path / "idx", whole.parent / "again.jsonl", settings, matcher="none")
    assert s.resumed == 1 and s.matched == 2 and (whole.parent / "again.jsonl").read_text() == whole.read_text()
    assert match_queries(queries, tmp_path / "idx", whole, settings, matcher="none").skipped


def test_cli_index_match_and_errors(refs, tmp_path):
    from click.testing import CliRunner

    from refsr_cli.main import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["-q", "index-refs", str(refs), "--index", str(tmp_path / "idx"), "--clip-model", TINY,
                            "--pretrained", "none"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["-q", "index-refs", str(refs), "--index", str(tmp_path / "idx"), "--model", TINY,
                            "--pretrained", "none"])  # the deprecated name still works, with one warning line
    assert r.exit_code == 0 and r.stderr.splitlines() == [
        "warning: index-refs --model is deprecated; use --clip-model (--model names a refsr model in other commands)"]
    r = runner.invoke(cli, ["index-refs", str(refs), "--index", str(tmp_path / "idx"), "--model", TINY,
                            "--clip-model", TINY])
    assert r.exit_code == 2 and "give --clip-model only" in r.output
    r = runner.invoke(cli, ["index-refs", "--index", str(tmp_path / "idx"), "--info"])
    assert r.exit_code == 0 and "4 images" in r.output and "dim 32" in r.output and "hnsw M 16" in r.output
    r = runner.invoke(cli, ["index-refs", "--index", str(tmp_path / "idx"), "--merge", "--ef-search", "64"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["index-refs", "--index", str(tmp_path / "idx"), "--info"])
    assert "ef-search 64" in r.output
    r = runner.invoke(cli, ["index-refs", "--index", str(tmp_path / "idx"), "--merge", "--hnsw-m", "32"])
    assert r.exit_code == 1 and "made with M=16" in r.output and "--hnsw-m 32" in r.output
    r = runner.invoke(cli, ["index-refs", "--index", str(tmp_path / "idx"), "--info", "--ef-search", "64"])
    assert r.exit_code == 2 and "--info only reads" in r.output
    r = runner.invoke(cli, ["-q", "match", str(refs), "--index", str(tmp_path / "idx"), "-o", str(tmp_path / "m.jsonl"),
                            "--matcher", "none", "--window", "64", "--stride", "32", "--top-refs", "3"])
    assert r.exit_code == 0, r.output
    assert all(len(rec["refs"]) == 3 for rec in read_matches(tmp_path / "m.jsonl"))
    # the old name --patch (the matcher's training patch in `refsr train matcher`) still works, warned
    r = runner.invoke(cli, ["-q", "match", str(refs), "--index", str(tmp_path / "idx"), "-o", str(tmp_path / "m.jsonl"),
                            "--matcher", "none", "--patch", "64", "--stride", "32", "--top-refs", "3"])
    assert r.exit_code == 0 and r.stderr.splitlines() == [
        "warning: match --patch is deprecated; use --window (--patch names the matcher's training patch in "
        "`refsr train matcher`)"], r.output
    assert "kept it" in r.stdout  # the same settings as --window 64: the output is kept
    r = runner.invoke(cli, ["index-refs", str(refs), "--index", str(tmp_path / "idx2")])
    assert r.exit_code == 1 and "not cached" in r.output and "--weights" in r.output
    r = runner.invoke(cli, ["match", str(refs), "--index", str(tmp_path / "idx"), "-o", str(tmp_path / "x.jsonl"),
                            "--query", "mid"])
    assert r.exit_code == 2
