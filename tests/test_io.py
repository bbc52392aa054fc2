"""refsr.io: image round trips, atomic writes, input lists, manifest validation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from refsr import io
from refsr.errors import InputError, ManifestError


def small(photo, size=(48, 40)):
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------


def test_8bit_round_trip_is_exact(tmp_path, astronaut):
    rgb = io.to_uint(small(astronaut)).astype(np.float32) / 255.0
    io.write_image(tmp_path / "a.png", rgb)
    img = io.read_image(tmp_path / "a.png")
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (40, 48, 3)
    assert img.bit_depth == 8 and not img.gray and img.alpha is None
    np.testing.assert_array_equal(img.rgb, rgb)


def test_rgb_channel_order_is_rgb(tmp_path):
    red = np.zeros((4, 4, 3), np.float32)
    red[:, :, 0] = 1.0
    io.write_image(tmp_path / "red.png", red)
    raw = cv2.imread(str(tmp_path / "red.png"))  # OpenCV reads BGR
    assert raw[0, 0].tolist() == [0, 0, 255]
    assert io.read_image(tmp_path / "red.png").rgb[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_16bit_round_trip_keeps_depth(tmp_path, coffee):
    rgb = io.to_uint(small(coffee), 16).astype(np.float32) / 65535.0
    io.write_image(tmp_path / "c16.png", rgb, bit_depth=16)
    assert cv2.imread(str(tmp_path / "c16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    img = io.read_image(tmp_path / "c16.png")
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.rgb, rgb, atol=1e-7)


def test_gray_is_remembered_and_written_back_gray(tmp_path, astronaut):
    gray = io.to_uint(small(astronaut).mean(axis=2))
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    img = io.read_image(tmp_path / "g.png")
    assert img.gray and img.rgb.shape == (40, 48, 3)
    np.testing.assert_array_equal(img.rgb[:, :, 0], img.rgb[:, :, 2])
    io.write_like(tmp_path / "g_out.png", img.rgb, img)
    raw = cv2.imread(str(tmp_path / "g_out.png"), cv2.IMREAD_UNCHANGED)
    assert raw.ndim == 2
    np.testing.assert_array_equal(raw, gray)


def test_rgba_alpha_preserved_exactly(tmp_path, coffee):
    bgr = io.to_uint(small(coffee))[:, :, ::-1]
    alpha = np.tile(np.arange(48, dtype=np.uint8)[None, :] * 5, (40, 1))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, alpha]))
    img = io.read_image(tmp_path / "rgba.png")
    assert img.alpha is not None and not img.gray
    np.testing.assert_array_equal(io.to_uint(img.alpha), alpha)
    io.write_like(tmp_path / "rgba_out.png", img.rgb, img)
    raw = cv2.imread(str(tmp_path / "rgba_out.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(raw[:, :, 3], alpha)
    np.testing.assert_array_equal(raw[:, :, :3], bgr)


def test_write_like_upsamples_alpha(tmp_path):
    img = io.Image(rgb=np.zeros((4, 4, 3), np.float32), alpha=np.ones((4, 4), np.float32))
    io.write_like(tmp_path / "big.png", np.zeros((16, 16, 3), np.float32), img)
    raw = cv2.imread(str(tmp_path / "big.png"), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (16, 16, 4) and (raw[:, :, 3] == 255).all()


def _jpeg_with_orientation(pixels_rgb: np.ndarray, orientation: int) -> bytes:
    import io as _io

    from PIL import Image as PILImage

    pil = PILImage.fromarray(pixels_rgb)
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    buf = _io.BytesIO()
    pil.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_rotated_jpeg_is_read_upright(tmp_path, astronaut):
    upright = io.to_uint(small(astronaut, (64, 32)))  # 32 rows x 64 cols
    # Orientation 6 means "rotate 90 clockwise to display": store the pixels rotated
    # counter-clockwise, as a camera held sideways would.
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    (tmp_path / "rot.jpg").write_bytes(_jpeg_with_orientation(stored, 6))
    img = io.read_image(tmp_path / "rot.jpg")
    assert img.rgb.shape == (32, 64, 3)
    err = np.abs(img.rgb - upright.astype(np.float32) / 255).mean()
    assert err < 0.03, err  # JPEG loss only, no rotation mismatch


@pytest.mark.parametrize(
    "content,expect",
    [(b"", "empty"), (b"this is not an image", "not a readable image")],
)
def test_bad_files_raise_naming_the_file(tmp_path, content, expect):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(InputError, match=expect) as e:
        io.read_image(bad)
    assert str(bad) in str(e.value)


def test_truncated_png_raises(tmp_path, astronaut):
    data = io.encode_png(small(astronaut))
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.png"):
        io.read_image(tmp_path / "trunc.png")


def test_missing_file_raises(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        io.read_image(tmp_path / "nope.png")


# ---------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "result.json"
    with pytest.raises(RuntimeError):
        with io.atomic_open(target) as f:
            f.write('{"half": ')
            raise RuntimeError("crash midway")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "x.png"
    io.write_image(target, np.zeros((4, 4, 3), np.float32))
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_write_image_rejects_non_png(tmp_path):
    with pytest.raises(ValueError, match="PNG"):
        io.write_image(tmp_path / "x.jpg", np.zeros((2, 2, 3), np.float32))


# ---------------------------------------------------------------------------------------
# listing inputs, shards
# ---------------------------------------------------------------------------------------


def test_list_images_sorted_recursive_and_errors(tmp_path):
    for name in ["b.png", "a.jpg", "sub/c.png", "notes.txt"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert [p.name for p in io.list_images(tmp_path)] == ["a.jpg", "b.png"]
    assert [p.name for p in io.list_images(tmp_path, recursive=True)] == ["a.jpg", "b.png", "c.png"]
    with pytest.raises(InputError, match="not an image file"):
        io.list_images(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        io.list_images(tmp_path / "missing")


def test_shards_partition_the_inputs():
    items = list(range(10))
    parts = [io.select_shard(items, f"{k}/3") for k in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[1] == [1, 4, 7]
    for bad in ["3/3", "a/b", "1"]:
        with pytest.raises(ValueError):
            io.parse_shard(bad)


# ---------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------


def _pair(tmp_path, **overrides):
    for name in ("hr/p0.png", "lr/p0.png"):
        io.write_image(tmp_path / name, np.zeros((8, 8, 3), np.float32))
    record = {
        "format": io.PAIR_FORMAT, "id": "p0", "hr": "hr/p0.png", "lr": "lr/p0.png", "scale": 4,
        "source": "src.png", "crop": [0, 0, 8, 8], "seed": 0, "degradation": {},
    }
    record.update(overrides)
    return record


def test_pair_manifest_round_trip_resolves_relative_paths(tmp_path):
    io.write_jsonl(tmp_path / "manifest.jsonl", [_pair(tmp_path)])
    (rec,) = io.read_pair_manifest(tmp_path / "manifest.jsonl")
    assert rec["hr_path"] == tmp_path / "hr/p0.png" and rec["lr_path"].is_file()
    assert io.list_images(tmp_path / "manifest.jsonl", manifest_key="lr") == [tmp_path / "lr/p0.png"]


@pytest.mark.parametrize(
    "overrides,expect",
    [
        ({"scale": None}, "field 'scale' must be a integer"),
        ({"crop": "0,0,8,8"}, "field 'crop' must be a list"),
        ({"lr": "lr/missing.png"}, "lr image 'lr/missing.png' does not exist"),
    ],
)
def test_pair_manifest_errors_name_file_and_line(tmp_path, overrides, expect):
    good = _pair(tmp_path)
    bad = _pair(tmp_path, id="p1", **overrides)
    path = tmp_path / "manifest.jsonl"
    io.write_jsonl(path, [good, bad])
    with pytest.raises(ManifestError) as e:
        io.read_pair_manifest(path)
    assert str(e.value).startswith(f"{path}:2: ")
    assert expect in str(e.value)


def test_pair_manifest_missing_field_and_bad_json(tmp_path):
    record = _pair(tmp_path)
    del record["seed"]
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: missing field 'seed'"):
        io.read_pair_manifest(path)
    path.write_text("\n" + json.dumps(_pair(tmp_path)) + "\n{oops\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:3: invalid JSON"):
        io.read_jsonl(path)


def test_matches_validation(tmp_path):
    io.write_image(tmp_path / "ref.png", np.zeros((8, 8, 3), np.float32))
    good = {"id": "p0", "query": "q.png", "refs": [{"path": "ref.png", "box": [0, 0, 8, 8], "score": 0.9, "image_score": 0.8}]}
    io.write_jsonl(tmp_path / "matches.jsonl", [good])
    (rec,) = io.read_matches(tmp_path / "matches.jsonl")
    assert rec["refs"][0]["abs_path"] == tmp_path / "ref.png"
    bad = json.loads(json.dumps(good))
    bad["refs"][0]["box"] = [0, 0, 8]
    io.write_jsonl(tmp_path / "matches.jsonl", [good, bad])
    with pytest.raises(ManifestError, match=r"matches.jsonl:2: refs\[0\]: box must be"):
        io.read_matches(tmp_path / "matches.jsonl")


# ---------------------------------------------------------------------------------------
# file modes: what a plain write would give (issue 17.1)
# ---------------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path, umask):
    io.write_json(tmp_path / "a.json", {"x": 1})
    io.write_image(tmp_path / "deep" / "b.png", np.zeros((4, 4, 3), np.float32))
    io.write_jsonl(tmp_path / "c.jsonl", [{"x": 1}])
    with io.atomic_path(tmp_path / "d.bin") as tmp:
        tmp.write_bytes(b"x")
    for name in ("a.json", "deep/b.png", "c.jsonl", "d.bin"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert _mode(tmp_path / "deep") == 0o777 & ~umask
    assert io.current_umask() == umask


def test_temp_folders_renamed_into_place_get_the_umask_mode(tmp_path, umask):
    tmp = io.temp_dir_beside(tmp_path / "model")
    assert tmp.parent == tmp_path and tmp.name.startswith(".model.")
    assert _mode(tmp) == 0o777 & ~umask


def test_replace_dir_publishes_with_umask_modes_and_swaps(tmp_path, umask):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    tmp = io.temp_dir_beside(tmp_path / "model")
    (tmp / "sub").mkdir(mode=0o700)
    fd = os.open(tmp / "sub" / "w.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors writes
    os.close(fd)
    io.replace_dir(tmp, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["sub"]
    assert _mode(tmp_path / "model" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "sub" / "w.safetensors") == 0o666 & ~umask


# ---------------------------------------------------------------------------------------
# image_to_tensor: the one numpy -> torch conversion
# ---------------------------------------------------------------------------------------


def test_image_to_tensor_ranges_layout_and_ownership():
    import torch

    rgb = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    x = io.image_to_tensor(rgb)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1))
    y = io.image_to_tensor(rgb, (-1, 1), device="cpu", batch=True)
    assert y.shape == (1, 3, 5, 7)
    assert torch.equal(y[0], torch.from_numpy(rgb).permute(2, 0, 1) * 2.0 - 1.0)  # the U-Net's [-1, 1], bit for bit
    assert float(io.image_to_tensor(np.ones((1, 1, 3), np.float32), (-1, 1)).max()) == 1.0
    flipped = rgb[:, ::-1]  # a negative-stride view is fine, and the tensor never aliases the array
    z = io.image_to_tensor(flipped)
    assert torch.equal(z, torch.from_numpy(flipped.copy()).permute(2, 0, 1))
    before = rgb.copy()
    io.image_to_tensor(rgb).add_(1)
    assert np.array_equal(rgb, before)


# ---------------------------------------------------------------------------------------
# One implementation per concept (issue 15): weights files, bicubic LR upsampling, VQ factor,
# atomic folder export
# ---------------------------------------------------------------------------------------


def test_one_weights_reader_with_the_callers_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    from refsr.errors import BadWeightsError

    save_file({"w": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, tmp_path / "b.pt")
    assert io.read_weights(tmp_path / "a.safetensors")["w"].tolist() == [1.0, 1.0]
    assert list(io.load_state_dict_file(tmp_path / "b.pt")) == ["w"]
    for name in ("c.pt", "c.safetensors"):
        (tmp_path / name).write_bytes(b"\x00corrupt" * 10)
        kind = "a safetensors file" if name.endswith("safetensors") else "a weights-only checkpoint"
        with pytest.raises(InputError, match=f"^weights file {tmp_path / name} cannot be read as {kind} "):
            io.load_state_dict_file(tmp_path / name)
        with pytest.raises(BadWeightsError, match=f"^FID \\(Inception\\) weights {tmp_path / name} cannot be read as "):
            io.read_weights(tmp_path / name, "FID (Inception)", error=BadWeightsError)


def test_one_bicubic_lr_upsampling_one_vq_factor_one_folder_export():
    """The model's LR upsampling is `models.ldm.upsample_lr` (numpy twin: `io.upsample_bicubic`),
    the VQ factor `models.autoencoder.vq_downsampling`, folder export `io.temp_dir_beside` +
    `io.replace_dir`: no other module of refsr/ writes them again."""
    import re

    import torch
    import torch.nn.functional as F

    from refsr.models.ldm import upsample_lr

    lr = torch.rand(1, 3, 5, 7) * 2.4 - 1.2
    expected = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(upsample_lr(lr, 4), expected) and torch.equal(upsample_lr(lr, size=(20, 28)), expected)
    assert torch.equal(upsample_lr(lr, 4, value_range=(0, 1)), expected.clamp(0, 1))
    rgb = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    assert np.array_equal(io.upsample_bicubic(rgb, 3),
                          np.clip(cv2.resize(rgb, (21, 15), interpolation=cv2.INTER_CUBIC), 0, 1))
    root = Path(io.__file__).parent
    sources = {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*.py")}
    where = lambda pattern: sorted(n for n, s in sources.items() if re.search(pattern, s))  # noqa: E731
    assert where(r'mode="bicubic"') == ["models/ldm.py"]
    # cv2 cubic elsewhere is not LR upsampling: degradation ops, reference fragments, CLIP preprocessing
    assert where(r"INTER_CUBIC") == ["degrade/ops.py", "io.py", "retrieval/embed.py", "sample/references.py"]
    assert where(r"2 \*\* \(len\(\w+(\.\w+)*\.config\.block_out_channels\)") == ["models/autoencoder.py"]
    assert where(r"mkdtemp|\.tmp\"\)?\s*$|tmp\.mkdir\(") == ["io.py"]
    assert where(r"torch\.load\((?!weights_only)") == ["io.py"]  # one weights reader, io.read_weights
