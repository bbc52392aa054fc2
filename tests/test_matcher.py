"""The matcher stage: InfoNCE, positive pairs, training, export/load, location accuracy,
`match` with a trained matcher, and the CLI. Tiny nets on small scikit-image photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from refsr.errors import InputError
from refsr.io import read_matches, write_image
from refsr.models.matcher import SHIPPED_MATCHER, MatcherNet, load_matcher
from refsr.retrieval.matcher_eval import location_accuracy, make_queries
from refsr.train import TrainOptions
from refsr.train.data import split_images
from refsr.train.matcher import MatcherModule, PositivePairs, build_matcher_net, info_nce, train_matcher

from conftest import small_photo  # noqa: E402

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "hubble_deep_field", "immunohistochemistry"]


@pytest.fixture(scope="module")
def pixels():
    return {n: small_photo(n) for n in PHOTOS}


@pytest.fixture
def photos(tmp_path, pixels) -> Path:
    folder = tmp_path / "photos"
    for n in PHOTOS:
        write_image(folder / f"{n}.png", pixels[n])
    return folder


def _opts(out, steps, **kw):
    base = dict(output=Path(out), steps=steps, batch_size=8, lr=2e-3, device="cpu", log_every=5, warmup_steps=0,
                validate_every=0, ema_decay=0.0, checkpoint_every=1000)
    return TrainOptions(**{**base, **kw})


# ---------------------------------------------------------------------------------------
# Loss and data
# ---------------------------------------------------------------------------------------


def test_info_nce_values():
    q = torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    loss, top1 = info_nce(q, q, temperature=0.01)  # positives identical, negatives far apart
    assert loss.item() < 1e-3 and top1.item() == 1.0
    same = torch.nn.functional.normalize(torch.ones(6, 16), dim=1)
    loss, _ = info_nce(same, same, temperature=0.07)  # nothing to tell apart: log B
    assert math.isclose(loss.item(), math.log(6), rel_tol=1e-5)
    loss, top1 = info_nce(q, q.roll(1, dims=0), temperature=0.01)  # positives are someone else's
    assert loss.item() > 5 and top1.item() == 0.0


def test_positive_pairs_overlap_and_are_reproducible(photos):
    paths = sorted(photos.iterdir())
    data = PositivePairs(paths, patch=32, seed=3, max_shift=0.25)
    a, b = data[17], PositivePairs(paths, patch=32, seed=3, max_shift=0.25)[17]
    assert torch.equal(a["ref"], b["ref"]) and torch.equal(a["query"], b["query"])
    assert a["ref"].shape == (3, 32, 32) and a["ref"].min() >= 0 and a["ref"].max() <= 1
    assert a["degrade_key"] == "matcher-17"
    # the query is the reference window shifted by at most a quarter patch: some rows/cols coincide
    for g in range(10):
        item = data[g]
        ref, query = item["ref"].numpy(), item["query"].numpy()
        shifts = [(dy, dx) for dy in range(-8, 9) for dx in range(-8, 9)
                  if np.allclose(ref[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)],
                                 query[:, max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)])]
        assert shifts, f"sample {g}: query does not overlap its reference"


def test_split_by_image_is_deterministic_and_disjoint(photos):
    paths = sorted(photos.iterdir())
    train, held = split_images(paths, photos, 0.3, seed=1)
    assert (train, held) == split_images(paths, photos, 0.3, seed=1)
    assert set(train).isdisjoint(held) and sorted(train + held) == paths and held
    with pytest.raises(InputError, match="need at least one of each"):
        split_images(paths[:1], photos, 0.5, seed=0)


def test_module_degrades_query_to_lr_look(photos):
    data = PositivePairs(sorted(photos.iterdir()), patch=32, seed=0)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    module = MatcherModule(build_matcher_net("none", depth=1, head_dim=8), scale=4)
    degraded = module.degraded(batch["query"], batch["degrade_key"])
    assert degraded.shape == batch["query"].shape and degraded.min() >= 0 and degraded.max() <= 1
    # detail is lost: high frequencies (Laplacian energy) drop for every sample
    lap = lambda x: (x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2]  # noqa: E731
                     - x[..., 1:-1, 2:]).pow(2).mean(dim=(1, 2, 3))
    assert torch.all(lap(degraded) < lap(batch["query"]))


# ---------------------------------------------------------------------------------------
# Network: export / load
# ---------------------------------------------------------------------------------------


def test_export_load_round_trip(tmp_path):
    """MatcherNet is a diffusers model: save_pretrained -> from_pretrained / load_matcher, same outputs."""
    torch.manual_seed(0)
    net = MatcherNet(depth=2, head_dim=16).eval()
    x = torch.rand(2, 3, 48, 40)
    net.save_pretrained(tmp_path / "f32")
    net.save_pretrained(tmp_path / "f16", dtype="float16")
    cfg = json.loads((tmp_path / "f16" / "config.json").read_text())
    assert cfg["_class_name"] == "MatcherNet" and "_diffusers_version" in cfg
    assert (cfg["arch"], cfg["depth"], cfg["head_dim"]) == ("resnet34", 2, 16)
    assert sorted(f.name for f in (tmp_path / "f16").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    with torch.no_grad():
        y = net(x)
        torch.testing.assert_close(MatcherNet.from_pretrained(tmp_path / "f32")(x), y)
        again = load_matcher(str(tmp_path / "f16"))
        assert again.stride == 8 and not again.training and next(again.parameters()).dtype == torch.float32
        torch.testing.assert_close(again(x), y, atol=2e-2, rtol=2e-2)
    assert next(net.parameters()).dtype == torch.float32  # the export cast a copy
    size = lambda d: (tmp_path / d / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    assert size("f16") < 0.6 * size("f32")
    # a trained folder can be the start of another run (trunk and head continue) ...
    start = build_matcher_net(str(tmp_path / "f32"))
    assert start.training
    with torch.no_grad():
        torch.testing.assert_close(start.eval()(x), y)
    # ... and a trunk alone gets a new head of the asked size
    trunk = load_matcher("none", depth=2)
    trunk.save_pretrained(tmp_path / "trunk")
    assert MatcherNet.from_pretrained(tmp_path / "trunk").config.head_dim is None
    grown = build_matcher_net(str(tmp_path / "trunk"), head_dim=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(grown.trunk(x), trunk.trunk(x))
        assert grown(x).shape[1] == 8


def test_shipped_matcher_still_loads_and_scores_as_before():
    """refsr/weights/matcher (refsr.matcher/1: config.json + model.safetensors, float16) loads
    unchanged; its features on a fixed input are those recorded before the move to models/."""
    from refsr.retrieval.match import feature_map

    cfg = json.loads((SHIPPED_MATCHER / "config.json").read_text())
    assert cfg["format"] == "refsr.matcher/1" and (SHIPPED_MATCHER / "model.safetensors").is_file()
    net = load_matcher("shipped")
    assert isinstance(net, MatcherNet) and (net.config.depth, net.config.head_dim, net.stride) == (3, 128, 16)
    assert next(net.parameters()).dtype == torch.float32 and not net.training
    f = feature_map(net, small_photo("astronaut", (64, 48)), "cpu")
    assert f.shape == (128, 3, 4)
    np.testing.assert_allclose(f[:3, 0, 0], [-0.12508321, -0.05956744, 0.02060868], atol=1e-4)
    assert abs(float(f.sum()) - -21.088554) < 1e-2 and abs(float(np.abs(f).mean()) - 0.25558773) < 1e-5


def test_legacy_trunk_folder_and_file_load(tmp_path):
    """A refsr.matcher/1 trunk folder (keys without the trunk. prefix) and a bare .safetensors trunk."""
    from safetensors.torch import save_file

    net = load_matcher("none", depth=1)
    (tmp_path / "old").mkdir()
    save_file({k: v.contiguous() for k, v in net.trunk.state_dict().items()}, str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text(json.dumps(
        {"_class_name": "ResNetTrunk", "format": "refsr.matcher/1", "arch": "resnet34", "depth": 1}))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_matcher(str(tmp_path / "old"))(x), net(x))
    bare = (tmp_path / "old" / "model.safetensors").rename(tmp_path / "bare.safetensors")
    with pytest.raises(InputError, match="bare.safetensors: weights do not fit"):  # alone, a file is a depth-3 trunk
        load_matcher(str(bare))
    with pytest.raises(InputError, match="old/model.safetensors: weights file not found"):
        load_matcher(str(tmp_path / "old"))
    (tmp_path / "old" / "config.json").write_text(json.dumps({"format": "refsr.other/1"}))
    with pytest.raises(InputError, match="not a matcher config"):
        load_matcher(str(tmp_path / "old"))
    with pytest.raises(InputError, match="not a matcher folder"):
        load_matcher(str(tmp_path))


# ---------------------------------------------------------------------------------------
# Location accuracy
# ---------------------------------------------------------------------------------------


class PatchifyNet(torch.nn.Module):
    """A local feature map without padding (random 8x8 stride-8 conv + ReLU): a window
    aligned to the cells pools exactly the features of the same crop seen alone."""

    stride = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 64, 8, stride=8)

    def forward(self, x):
        return torch.relu(self.conv(x - 0.5))


def test_location_accuracy_finds_undegraded_crop_at_top1(pixels):
    images = [small_photo(n, (192, 128)) for n in PHOTOS[:4]]
    net = PatchifyNet()
    queries = make_queries(images, patch=64, stride=16, per_image=2, seed=0, preset=None)
    assert len(queries) == 8
    q0 = queries[0]
    x, y, w, h = q0.box
    assert np.array_equal(q0.rgb, images[q0.image][y:y + h, x:x + w])
    acc = location_accuracy(net, images, queries, patch=64, stride=16)
    assert acc["top1"] == 1.0 and acc["top10"] == 1.0 and acc["queries"] == 8
    # the same queries claimed at a window that does not overlap their true box: never found
    for q in queries:
        q.box = np.array([128 if q.box[0] < 64 else 0, 64 if q.box[1] < 32 else 0, 64, 64])
    acc = location_accuracy(net, images, queries, patch=64, stride=16, ks=(1,))
    assert acc["top1"] == 0.0 and acc["queries"] == 8


# ---------------------------------------------------------------------------------------
# Training end to end
# ---------------------------------------------------------------------------------------


def _fixed_loss(net, photos, seed=0) -> float:
    data = PositivePairs(sorted(photos.iterdir()), patch=32, seed=seed)
    batch = torch.utils.data.default_collate([data[10**9 + i] for i in range(16)])
    module = MatcherModule(net, scale=4, seed=seed).train()
    with torch.no_grad():
        return module(batch)[0].item()


def test_tiny_run_lowers_infonce_and_exports(photos, tmp_path):
    torch.manual_seed(0)
    before = _fixed_loss(build_matcher_net("none", depth=1, head_dim=32), photos)
    result = train_matcher(photos, _opts(tmp_path / "run", 40), init="none", depth=1, head_dim=32, patch=32,
                           holdout=0.0, export_dtype="float32")
    model = tmp_path / "run" / "model"
    assert result["model"] == str(model) and result["eval"] == {} and result["train_images"] == len(PHOTOS)
    after = _fixed_loss(MatcherNet.from_pretrained(model), photos)
    assert after < 0.9 * before, (before, after)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(5, 41, 5)) and all("batch_top1" in m for m in lines)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) == len(PHOTOS) and split["held_out"] == []
    _match_with(model, photos, tmp_path)


def _match_with(model: Path, photos: Path, tmp_path: Path) -> None:
    """`match` loads the exported matcher through load_matcher and records which one it used."""
    from refsr.retrieval.embed import EmbedderSpec
    from refsr.retrieval.index import index_refs
    from refsr.retrieval.match import MatchSettings, match_queries

    net = load_matcher(str(model))
    assert isinstance(net, MatcherNet) and not net.training
    index_refs([photos], tmp_path / "idx", EmbedderSpec(str(Path(__file__).parent / "data" / "tiny-clip-vit.json"), None))
    write_image(tmp_path / "queries" / "crop.png", small_photo("astronaut")[16:80, 32:96])
    out = tmp_path / "matches.jsonl"
    match_queries(tmp_path / "queries", tmp_path / "idx", out, MatchSettings(top_images=3, top_refs=4, patch=32, stride=16),
                  matcher=str(model))
    (rec,) = read_matches(out)
    assert rec["matcher"] == str(model) and len(rec["refs"]) == 4
    assert all(r["box"][2:] == [32, 32] and -1 <= r["score"] <= 1 for r in rec["refs"])


def test_cli_trains_evaluates_and_checks_options(photos, tmp_path):
    from click.testing import CliRunner

    from refsr_cli.main import cli

    args = ["train", "matcher", str(photos), "-o", str(tmp_path / "run"), "--init", "none",
            "--depth", "1", "--head-dim", "16", "--patch", "32", "--steps", "2", "--batch-size", "4", "--holdout", "0.3",
            "--eval-queries", "1", "--device", "cpu", "--max-side", "96"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "held-out location accuracy" in result.output and "trained" in result.output and "random" in result.output
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())["eval"]
    assert 0 <= ev["trained"]["top1"] <= ev["trained"]["top10"] <= 1 and ev["random"]["queries"] == ev["protocol"]["images"]
    assert "unavailable" in ev["imagenet"]
    bad = CliRunner().invoke(cli, args[:-2] + ["--patch", "30", "-o", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "not a multiple of --scale 4" in bad.output
    missing = CliRunner().invoke(cli, [a if a != "none" else "imagenet" for a in args[:-2]] + ["-o", str(tmp_path / "r3")])
    assert missing.exit_code == 1 and "--init none" in missing.output


def test_weights_that_do_not_fit_the_config_are_a_one_line_error(tmp_path):
    """A matcher folder whose config says one shape but whose weights are another, in both
    layouts: one line naming the file, not torch's or diffusers' multi-line message."""
    MatcherNet("resnet34", 2, 16).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "head_dim": 8}))
    with pytest.raises(InputError, match=r"m: weights do not fit its config \(.*head") as e:
        load_matcher(str(tmp_path / "m"))
    assert "\n" not in str(e.value)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "head_dim": None}))
    with pytest.raises(InputError, match=r"weights do not fit its config \(missing \[\], unexpected \['head"):
        load_matcher(str(tmp_path / "m"))
    MatcherNet("resnet34", 2, 16).save_pretrained(tmp_path / "old")  # the refsr.matcher/1 layout, depth 3 claimed
    (tmp_path / "old" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text(json.dumps(
        {"_class_name": "MatcherNet", "format": "refsr.matcher/1", "arch": "resnet34", "depth": 3, "head_dim": 16}))
    with pytest.raises(InputError, match=r"model.safetensors: weights do not fit .*size mismatch"):
        load_matcher(str(tmp_path / "old"))


def test_retrieval_and_train_do_not_import_each_other():
    """The matcher network lives in refsr.models: retrieval and train import it, not each other."""
    import subprocess
    import sys

    check = ("import sys, {mods}; bad = sorted(m for m in sys.modules if m.startswith('{other}')); "
             "assert not bad, bad; print('ok')")
    retrieval = ("refsr.retrieval, refsr.retrieval.match, refsr.retrieval.matcher_eval, refsr.retrieval.embed, "
                 "refsr.models.matcher")
    train = "refsr.train, refsr.train.matcher, refsr.train.loop, refsr.train.data, refsr.models.matcher"
    for mods, other in ((retrieval, "refsr.train"), (train, "refsr.retrieval")):
        proc = subprocess.run([sys.executable, "-c", check.format(mods=mods, other=other)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
