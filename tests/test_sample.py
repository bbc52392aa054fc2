"""`refsr sample` end to end on tiny random models (CPU, 2-3 steps, 16-48 px inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from refsr.errors import InputError, MissingWeightsError
from refsr.io import read_image, write_image, write_jsonl
from refsr.sample import SampleSettings, restore_tensor, sample_files
from refsr.sample.references import MatchTable, load_match_refs
from refsr_cli.main import cli

FAST = SampleSettings(steps=2, tile=0)


def _tiny(kind: str):
    from refsr.models import RefSRModel

    torch.manual_seed(0)
    model = RefSRModel.from_config("tiny", kind=kind).eval()
    if model.ref_branch is not None:  # an untrained branch adds exactly zero: wake it up
        for name, p in model.ref_branch.named_parameters():
            if "to_out" in name:
                torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.fixture(scope="module")
def ca_model():
    return _tiny("ldm-ca")


@pytest.fixture(scope="module")
def ca_folder(tmp_path_factory, ca_model):
    path = tmp_path_factory.mktemp("model") / "ldm-ca"
    ca_model.save_pretrained(path)
    return path


def _lr(photo, w, h):
    return cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)


def _tensor(rgb):
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None] * 2 - 1


def _run(*args):
    result = CliRunner().invoke(cli, ["-q", "sample", *map(str, args)])
    return result


# ---------------------------------------------------------------------------------------
# The tensor level: determinism, tiling, caching
# ---------------------------------------------------------------------------------------


def test_same_seed_same_result_other_seed_differs(ca_model, astronaut):
    lr, refs = _tensor(_lr(astronaut, 24, 16)), _tensor(_lr(astronaut, 64, 64))[:, None]
    run = lambda seed: restore_tensor(ca_model, lr, refs, settings=FAST, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 3, 64, 96) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_tile_tiled_equals_untiled(ca_model, coffee):
    lr, refs = _tensor(_lr(coffee, 24, 16)), _tensor(_lr(coffee, 64, 64))[:, None]
    settings = SampleSettings(steps=2, tile=32, tile_overlap=4)
    run = lambda force: restore_tensor(ca_model, lr, refs, settings=settings, generator=torch.Generator().manual_seed(3), force_tiles=force)  # noqa: E731
    assert torch.equal(run(False), run(True))


def test_cached_contexts_equal_recomputing_each_step(ca_model, coffee, astronaut):
    lr, refs = _tensor(_lr(coffee, 24, 16)), torch.cat([_tensor(_lr(astronaut, 64, 64)), _tensor(_lr(coffee, 64, 64))])[None]
    out = {}
    for cache in (True, False):  # two tiles, so the per-tile LR contexts are exercised too
        s = SampleSettings(steps=2, tile=16, tile_overlap=4, cache_context=cache)
        out[cache] = restore_tensor(ca_model, lr, refs, settings=s, generator=torch.Generator().manual_seed(0))
    no_refs = restore_tensor(ca_model, lr, None, settings=SampleSettings(steps=2, tile=16, tile_overlap=4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[True], out[False])
    assert (out[True] - no_refs).abs().max() > 1e-3  # the references really take part


def test_lr_contexts_over_the_cache_budget_are_recomputed_with_the_same_result(ca_model, coffee, astronaut, monkeypatch):
    """Tiles beyond the LR-context budget recompute E_LR at each step from their kept input:
    same bytes as caching every tile; the references are encoded once per image, not per tile."""
    import refsr.sample.core as core

    lr, refs = _tensor(_lr(coffee, 40, 16)), torch.cat([_tensor(_lr(astronaut, 64, 64)), _tensor(_lr(coffee, 64, 64))])[None]
    s = SampleSettings(steps=2, tile=16, tile_overlap=4, batch_size=2)
    calls = {"refs": 0, "lr": 0}
    for name in ("encode_references", "encode_lr"):
        original = getattr(ca_model, name)

        def counted(*a, _original=original, _key="refs" if name == "encode_references" else "lr", **k):
            calls[_key] += 1
            return _original(*a, **k)

        monkeypatch.setattr(ca_model, name, counted)
    cached = restore_tensor(ca_model, lr, refs, settings=s, generator=torch.Generator().manual_seed(0))
    tiles = calls["lr"]
    assert calls["refs"] == 1 and tiles >= 3  # once per image, once per tile
    monkeypatch.setattr(core, "LR_CONTEXT_CACHE_BYTES", 0)  # only the first tile's context is kept
    recomputed = restore_tensor(ca_model, lr, refs, settings=s, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached, recomputed)
    assert calls["lr"] - tiles == 1 + 2 * (tiles - 1)  # tile 0 once, the others at both steps


def test_shared_refs_are_encoded_once_per_run_with_the_same_outputs(ca_model, coffee, astronaut, tmp_path, monkeypatch):
    """--refs given to every input: encoded once for the run, not once per image, and every
    output has the bytes of a run that restores that image alone."""
    for name, photo in (("a", coffee), ("b", astronaut), ("c", np.ascontiguousarray(coffee[::-1]))):
        write_image(tmp_path / "lr" / f"{name}.png", _lr(photo, 24, 16))
    write_image(tmp_path / "refs" / "r1.png", _lr(astronaut, 64, 64))
    write_image(tmp_path / "refs" / "r2.png", _lr(coffee, 80, 64))
    calls, original = [], ca_model.encode_references
    monkeypatch.setattr(ca_model, "encode_references", lambda *a, **k: calls.append(1) or original(*a, **k))
    sample_files([tmp_path / "lr"], tmp_path / "all", model=ca_model, refs=[tmp_path / "refs"], settings=FAST, device="cpu")
    assert len(calls) == 1
    for name in "abc":
        sample_files([tmp_path / "lr" / f"{name}.png"], tmp_path / name, model=ca_model, refs=[tmp_path / "refs"],
                     settings=FAST, device="cpu")
        alone, shared = read_image(tmp_path / name / f"{name}_sr.png"), read_image(tmp_path / "all" / f"{name}_sr.png")
        assert np.array_equal(alone.rgb, shared.rgb)
    assert len(calls) == 4  # one per run


def _border_vs_inside(image, borders):
    """Mean |horizontal gradient| at the given column boundaries and at all others."""
    dx = (image[0, :, :, 1:] - image[0, :, :, :-1]).abs().mean(dim=(0, 1))
    inside = torch.ones_like(dx, dtype=torch.bool)
    inside[borders] = False
    return dx[borders].mean().item(), dx[inside].mean().item()


def test_tiled_output_has_no_seam_on_a_smooth_input(ca_model):
    """Across tile borders the mean |gradient| is not above that elsewhere; naively
    stitched independent tiles (the failure this guards against) do show the seam."""
    from refsr.sample.tiling import tile_starts

    yy, xx = np.mgrid[0:24, 0:64].astype(np.float32)
    smooth = np.stack([0.5 + 0.3 * np.sin(xx / 11), 0.4 + 0.2 * np.cos(yy / 9), 0.3 + 0.002 * xx], axis=2)
    settings = SampleSettings(steps=2, tile=24, tile_overlap=8)
    out = restore_tensor(ca_model, _tensor(smooth), None, settings=settings, generator=torch.Generator().manual_seed(0))
    starts = tile_starts(64, 24, 8)
    assert len(starts) >= 3
    borders = sorted({s * 4 - 1 for s in starts[1:]} | {(s + 24) * 4 - 1 for s in starts[:-1]})
    at_border, elsewhere = _border_vs_inside(out, borders)
    assert at_border <= elsewhere * 1.1

    cuts = [0] + [(a + 24 + b) // 2 for a, b in zip(starts, starts[1:])] + [64]
    hard = torch.zeros_like(out)
    for i, s in enumerate(starts):
        tile = restore_tensor(ca_model, _tensor(smooth[:, s : s + 24]), None, settings=FAST, generator=torch.Generator().manual_seed(i))
        hard[..., cuts[i] * 4 : cuts[i + 1] * 4] = tile[..., (cuts[i] - s) * 4 : (cuts[i + 1] - s) * 4]
    hard_border, hard_elsewhere = _border_vs_inside(hard, [c * 4 - 1 for c in cuts[1:-1]])
    assert hard_border > 1.5 * hard_elsewhere


def test_fp16_on_cpu_is_refused(ca_model):
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        restore_tensor(ca_model, torch.zeros(1, 3, 8, 8), settings=SampleSettings(steps=1, precision="fp16"))


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about(tmp_path, ca_folder, coffee, monkeypatch, native):
    """bf16 is emulated on a CPU without bf16 instructions (AVX512-BF16, AMX), several times
    slower than fp32: `refsr sample --precision bf16` says so, and samples anyway; not where the
    CPU has them."""
    import refsr.device

    monkeypatch.setattr(refsr.device, "cpu_bf16_supported", lambda: native)
    write_image(tmp_path / "lr.png", _lr(coffee, 16, 12))
    r = CliRunner().invoke(cli, ["sample", str(tmp_path / "lr.png"), "--model", str(ca_folder), "--steps", "1",
                                 "--precision", "bf16", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert ("bf16 on this CPU is emulated" in r.output) == (not native)
    assert (tmp_path / "out" / "lr_sr.png").is_file()


# ---------------------------------------------------------------------------------------
# Files: formats, references, resume, shards
# ---------------------------------------------------------------------------------------


def test_gray_alpha_and_16bit_round_trip(tmp_path, ca_model, astronaut, coffee):
    src = tmp_path / "lr"
    gray = _lr(coffee, 16, 16).mean(axis=2)
    write_image(src / "gray.png", gray, gray=True)
    alpha = np.tile(np.linspace(0, 1, 20, dtype=np.float32), (12, 1))
    write_image(src / "alpha.png", _lr(astronaut, 20, 12), alpha=alpha)
    write_image(src / "deep.png", _lr(coffee, 16, 12), bit_depth=16)
    out = tmp_path / "out"
    summary = sample_files([src], out, model=ca_model, settings=FAST, device="cpu")
    assert len(summary.written) == 3
    g = cv2.imread(str(out / "gray_sr.png"), cv2.IMREAD_UNCHANGED)
    assert g.shape == (64, 64) and g.dtype == np.uint8
    a = cv2.imread(str(out / "alpha_sr.png"), cv2.IMREAD_UNCHANGED)
    assert a.shape == (48, 80, 4)
    up = cv2.resize(alpha, (80, 48), interpolation=cv2.INTER_CUBIC)
    assert np.abs(a[:, :, 3] / 255.0 - up).max() < 0.02
    d = cv2.imread(str(out / "deep_sr.png"), cv2.IMREAD_UNCHANGED)
    assert d.shape == (48, 64, 3) and d.dtype == np.uint16


def test_outscale_and_odd_sizes_are_padded_then_cropped(tmp_path, ca_model, coffee):
    write_image(tmp_path / "odd.png", _lr(coffee, 13, 11))  # not a multiple of the U-Net's 2
    sample_files([tmp_path / "odd.png"], tmp_path / "a", model=ca_model, settings=FAST, device="cpu")
    sample_files([tmp_path / "odd.png"], tmp_path / "b", model=ca_model, settings=FAST, device="cpu", outscale=2.5)
    assert read_image(tmp_path / "a" / "odd_sr.png").rgb.shape == (44, 52, 3)
    assert read_image(tmp_path / "b" / "odd_sr.png").rgb.shape == (28, 32, 3)  # round(11*2.5), round(13*2.5)


def _match_setup(tmp_path, astronaut, coffee):
    write_image(tmp_path / "lr" / "p1.png", _lr(astronaut, 16, 16))
    write_image(tmp_path / "lr" / "p2.png", _lr(coffee, 16, 16))
    ref_img = np.concatenate([_lr(astronaut, 80, 80), _lr(coffee, 80, 80)], axis=1)  # 160x80
    write_image(tmp_path / "refs" / "both.png", ref_img)
    records = [
        {"id": "p2", "query": "lr/p2.png", "refs": [{"path": "refs/both.png", "box": [80, 0, 80, 80], "score": 0.9, "image_score": 0.8}]},
        {"id": "p1", "query": "lr/p1.png", "refs": [{"path": "refs/both.png", "box": [0, 0, 80, 80], "score": 0.7, "image_score": 0.6}]},
    ]
    write_jsonl(tmp_path / "matches.jsonl", records)
    return ref_img


def test_matches_give_each_input_its_own_fragment(tmp_path, ca_model, astronaut, coffee):
    ref_img = _match_setup(tmp_path, astronaut, coffee)
    table = MatchTable.read(tmp_path / "matches.jsonl")
    for stem, x0 in (("p1", 0), ("p2", 80)):
        (frag,) = load_match_refs(table.lookup(tmp_path / "lr" / f"{stem}.png"), size=64)
        expected = cv2.resize(ref_img[:, x0 : x0 + 80], (64, 64), interpolation=cv2.INTER_AREA)
        assert np.abs(frag.pixels - expected).max() < 2 / 255
    out = tmp_path / "out"
    sample_files([tmp_path / "lr"], out, model=ca_model, matches=tmp_path / "matches.jsonl", settings=FAST, device="cpu")
    images = json.loads((out / "run.json").read_text())["images"]
    assert images["p1_sr.png"]["refs"][0]["box"] == [0, 0, 80, 80]
    assert images["p2_sr.png"]["refs"][0]["box"] == [80, 0, 80, 80]
    assert images["p2_sr.png"]["refs"][0]["path"] == "../refs/both.png"


def test_a_fragment_shared_by_inputs_is_vq_encoded_once_with_the_same_outputs(tmp_path, ca_model, astronaut, coffee, monkeypatch):
    """Inputs whose matches name the same file and box: that fragment is VQ-encoded once per
    run, and every output has the bytes of a run that restores that input alone."""
    _match_setup(tmp_path, astronaut, coffee)
    for stem, photo in (("p1", astronaut), ("p2", coffee), ("p3", coffee[::-1].copy())):
        write_image(tmp_path / "lr" / f"{stem}.png", _lr(photo, 24, 16))  # not ref-sized once upsampled
    box = {"a": [0, 0, 80, 80], "b": [80, 0, 80, 80], "c": [40, 0, 80, 80]}
    records = [{"id": stem, "query": f"lr/{stem}.png", "refs": [{"path": "refs/both.png", "box": box[k], "score": 0.5, "image_score": 0.5} for k in keys]}
               for stem, keys in (("p1", "ab"), ("p2", "b"), ("p3", "ca"))]
    write_jsonl(tmp_path / "matches.jsonl", records)
    encoded, original = [], ca_model.branch_input

    def counted(images, latents=None):
        if images.shape[-2:] == (ca_model.ref_size, ca_model.ref_size):
            encoded.append(1)
        return original(images, latents)

    monkeypatch.setattr(ca_model, "branch_input", counted)
    import refsr.sample.references as references

    reads, read = [], references._read_reference
    monkeypatch.setattr(references, "_read_reference", lambda path: reads.append(path) or read(path))
    summary = sample_files([tmp_path / "lr"], tmp_path / "all", model=ca_model, matches=tmp_path / "matches.jsonl",
                           settings=FAST, device="cpu")
    assert len(encoded) == 3  # a, b, c: not 5
    assert (summary.fragments_encoded, summary.fragments_reused) == (3, 2)
    assert len(reads) == 2  # p1 reads both.png once for two boxes, p2 not at all (b is encoded), p3 once for c
    for stem in ("p1", "p2", "p3"):
        sample_files([tmp_path / "lr" / f"{stem}.png"], tmp_path / stem, model=ca_model,
                     matches=tmp_path / "matches.jsonl", settings=FAST, device="cpu")
        alone, shared = (read_image(tmp_path / d / f"{stem}_sr.png").rgb for d in (stem, "all"))
        assert np.array_equal(alone, shared)


def test_a_fragments_encoding_does_not_depend_on_its_companions(ca_model, astronaut, coffee):
    """Each fragment is VQ-encoded alone, so its E_Ref input has the same bytes whichever
    fragments share its image (what makes cached fragments exact); masked ones are zeros."""
    from refsr.sample.core import ReferenceInputCache, reference_inputs

    s = ca_model.ref_size
    refs = torch.cat([_tensor(_lr(astronaut, s, s)), _tensor(_lr(coffee, s, s))])[None]
    with torch.no_grad():
        pair = reference_inputs(ca_model, refs)
        alone = reference_inputs(ca_model, refs[:, 1:])
        masked = reference_inputs(ca_model, refs, torch.tensor([[False, True]]))
        cache = ReferenceInputCache()
        keys = [["astronaut", "coffee"]]
        first, again = (reference_inputs(ca_model, refs, keys=keys, cache=cache) for _ in range(2))
    assert torch.equal(pair[0, 1], alone[0, 0]) and torch.equal(masked[0, 1], alone[0, 0])
    assert not masked[0, 0].any()
    assert torch.equal(first, pair) and torch.equal(again, pair) and (cache.hits, cache.misses) == (2, 2)
    small = ReferenceInputCache(max_bytes=pair[0, 0].numel() * pair.element_size())  # room for one
    for key in ("x", "y"):
        small.put(key, pair[0, 0])
    assert list(small.items) == ["y"] and small.bytes <= small.max_bytes


@pytest.mark.parametrize("tile", [0, 16])
def test_upsampled_lr_is_vq_encoded_once_for_the_start_latent_and_e_lr(ca_model, coffee, astronaut, monkeypatch, tile):
    """start strength < 1 with references: the upsampled LR's latent (per tile) serves both the
    start latent and E_LR, encoded once, with the bytes of encoding it twice."""
    import refsr.sample.core as core

    lr = _tensor(_lr(coffee, 40, 16))
    s = ca_model.ref_size
    refs = torch.cat([_tensor(_lr(astronaut, s, s)), _tensor(_lr(coffee, s, s))])[None]
    settings = SampleSettings(steps=2, tile=tile, tile_overlap=4, start_strength=0.5)
    calls, original = [], ca_model.encode
    monkeypatch.setattr(ca_model, "encode", lambda x: calls.append(1) or original(x))
    once = restore_tensor(ca_model, lr, refs, settings=settings, generator=torch.Generator().manual_seed(0))
    tiles = len(calls) - 2  # each reference once, then the LR's tiles
    assert tiles == 1 if tile == 0 else tiles >= 3
    encode_lr_up = core._encode_lr_up
    monkeypatch.setattr(core, "_encode_lr_up", lambda model, canvas, settings, latents=None: encode_lr_up(model, canvas, settings))
    calls.clear()
    twice = restore_tensor(ca_model, lr, refs, settings=settings, generator=torch.Generator().manual_seed(0))
    assert len(calls) - 2 == 2 * tiles
    assert torch.equal(once, twice)


def test_cli_resume_shards_and_run_json(tmp_path, ca_folder, astronaut, coffee, motorcycle_pair):
    lr = tmp_path / "lr"
    for i, photo in enumerate([astronaut, coffee, motorcycle_pair[0]]):
        write_image(lr / f"im{i}.png", _lr(photo, 8 + 4 * i, 8))
    write_image(tmp_path / "ref.png", _lr(motorcycle_pair[1], 96, 64))
    common = ["--model", ca_folder, "--refs", tmp_path / "ref.png", "--steps", "1", "--device", "cpu"]
    r = _run(lr, "-o", tmp_path / "full", *common)
    assert r.exit_code == 0, r.output
    for k in range(2):
        assert _run(lr, "-o", tmp_path / "sharded", "--shard", f"{k}/2", *common).exit_code == 0
    full = sorted(p.name for p in (tmp_path / "full").glob("*.png"))
    assert full == ["im0_sr.png", "im1_sr.png", "im2_sr.png"]
    for name in full:
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes()
    run = json.loads((tmp_path / "sharded" / "run.json").read_text())
    assert sorted(run["images"]) == full and run["steps"] == 1 and run["sampler"] == "ddim" and run["kind"] == "ldm-ca"
    assert run["images"]["im1_sr.png"]["refs"][0] == {"path": "../ref.png", "box": [16, 0, 64, 64]}
    again = _run(lr, "-o", tmp_path / "full", *common)
    assert "skipped 3 existing" in again.output and "wrote 0 image(s)" in again.output
    before = (tmp_path / "full" / "im0_sr.png").stat().st_mtime_ns
    redo = _run(lr / "im0.png", "-o", tmp_path / "full", "--overwrite", *common)
    assert "wrote 1 image(s)" in redo.output and (tmp_path / "full" / "im0_sr.png").stat().st_mtime_ns > before
    assert sorted(json.loads((tmp_path / "full" / "run.json").read_text())["images"]) == full  # merged, not replaced


def test_ldm_pipeline_folder_loads_and_matches_diffusers(tmp_path, astronaut):
    """A folder saved by diffusers' own LDMSuperResolutionPipeline runs through `refsr sample`,
    and our untiled DDIM result equals the pipeline's for the same seed and steps."""
    from diffusers import DDIMScheduler, UNet2DModel, VQModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import LDMSuperResolutionPipeline

    from refsr.models import RefSRModel, load_config

    cfg = load_config("tiny")
    torch.manual_seed(1)
    vqvae, unet = VQModel(**cfg["vqvae"]), UNet2DModel(**cfg["unet"])
    pipe = LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(**cfg["scheduler"]))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe")
    lr = _lr(astronaut, 16, 16)
    write_image(tmp_path / "lr.png", lr)
    write_image(tmp_path / "ref.png", lr)
    r = _run(tmp_path / "lr.png", "-o", tmp_path / "out", "--model", tmp_path / "pipe", "--refs", tmp_path / "ref.png", "--steps", "3", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "references are ignored" in r.output
    assert read_image(tmp_path / "out" / "lr_sr.png").rgb.shape == (64, 64, 3)

    model = RefSRModel.from_pretrained(tmp_path / "pipe")
    assert model.kind == "ldm"
    ours = restore_tensor(model, _tensor(lr), settings=SampleSettings(steps=3, tile=0), generator=torch.Generator().manual_seed(5))
    theirs = pipe(_tensor(lr), num_inference_steps=3, eta=0.0, generator=torch.Generator().manual_seed(5), output_type="np").images
    assert np.abs((ours[0].permute(1, 2, 0).numpy() + 1) / 2 - theirs[0]).max() < 1e-5


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_missing_model_part_is_one_line(tmp_path, ca_folder, coffee):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ca_folder, broken)
    shutil.rmtree(broken / "unet")
    write_image(tmp_path / "x.png", _lr(coffee, 16, 16))
    r = _run(tmp_path / "x.png", "-o", tmp_path / "out", "--model", broken, "--steps", "1")
    assert r.exit_code == 1
    assert "unet/config.json is missing" in r.output and len(r.output.strip().splitlines()) == 1


def test_unreadable_reference_is_named(tmp_path, ca_model, coffee):
    write_image(tmp_path / "x.png", _lr(coffee, 16, 16))
    bad = tmp_path / "refs" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="reference .*broken.png"):
        sample_files([tmp_path / "x.png"], tmp_path / "out", model=ca_model, refs=[bad.parent], settings=FAST, device="cpu")
    assert not (tmp_path / "out" / "x_sr.png").exists()


def test_model_lookup_offline_and_default(monkeypatch, tmp_path):
    from refsr.sample import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="not a local folder nor in the Hugging Face cache"):
        loading.resolve_model_path("CompVis/ldm-super-resolution-4x-openimages")
    with pytest.raises(MissingWeightsError, match="no such model folder"):
        loading.resolve_model_path(str(tmp_path / "nowhere"))
    monkeypatch.setattr(loading, "__file__", str(tmp_path / "pkg" / "sample" / "loading.py"))
    with pytest.raises(MissingWeightsError, match="pass --model DIR"):
        loading.default_model_path()
