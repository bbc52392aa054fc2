"""Images, atomic writes, input lists and JSON Lines manifests.

Images are read with OpenCV into float32 RGB arrays of shape (H, W, 3) in [0, 1],
whatever the file holds (8 or 16 bits, gray, RGB, RGBA, EXIF-rotated). What is needed
to write an output "like the input" (bit depth, gray, alpha) travels alongside in
:class:`Image`.

Every file refsr writes goes through :func:`atomic_path`: the data lands in a temporary
file in the destination folder and is renamed over the destination only once complete, so
an interrupted run never leaves a half-written output and a rerun can trust what exists.
Files and folders get the mode a plain write would give them (``0666 & ~umask``,
``0777 & ~umask``), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np

from .errors import InputError, ManifestError, OutputError, RefSRError

def _quiet_opencv() -> None:
    """OpenCV prints its own warnings for corrupt files on stderr; refsr reports them itself
    (one line naming the file, as an exception), so OpenCV's own log is silenced."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # older/newer builds without the logging submodule
        if hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(0)


_quiet_opencv()

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
MANIFEST_EXTENSIONS = (".jsonl",)

PAIR_FORMAT = "refsr.pairs/1"
MATCH_FORMAT = "refsr.matches/1"


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows
    (``/proc/self/status`` on Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new empty hidden folder next to ``path`` (same file system, so it can be renamed onto
    ``path``), with the mode a plain ``mkdir`` would give it (``mkdtemp`` alone gives 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, dir_mode())
    return tmp


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Publish the finished folder ``src`` (from :func:`temp_dir_beside`) at ``dst``.

    Everything in ``src`` first gets the mode a plain write would give it (libraries such as
    safetensors write 0600 files); ``src`` is then renamed onto ``dst``, and an existing
    ``dst`` is removed only after the swap.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    fmode, dmode = file_mode(), dir_mode()
    for root, dirs, files in os.walk(src):
        os.chmod(root, dmode)
        for name in files:
            os.chmod(os.path.join(root, name), fmode)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Use it for libraries that want a file name (``safetensors.torch.save_file``,
    ``hnswlib.Index.save_index``). If the body raises, the temporary file is removed and
    ``path`` is left untouched. The temporary name keeps the suffix of ``path`` so that
    writers which choose a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; a plain write would give 0666 & ~umask
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # again: a library may have recreated it (safetensors: 0600)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and not isinstance(e, RefSRError):  # a full disk, no permission: name the file
            raise OutputError(f"{path}: cannot write it ({e.strerror or e})") from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """``open()`` for writing, atomically: the file appears complete or not at all."""
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open only writes whole files; got mode {mode!r}")
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


@dataclass
class Image:
    """A decoded image and what is needed to write a result back in the same form.

    Attributes:
        rgb (`np.ndarray`): (H, W, 3) float32 in [0, 1], RGB order, EXIF orientation applied.
        bit_depth (`int`): 8 or 16, the depth of the file.
        gray (`bool`): the file had a single luminance channel (``rgb`` repeats it).
        alpha (`np.ndarray` or `None`): (H, W) float32 in [0, 1] if the file had alpha.
        path (`Path` or `None`): where it was read from.
    """

    rgb: np.ndarray
    bit_depth: int = 8
    gray: bool = False
    alpha: np.ndarray | None = None
    path: Path | None = None

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


DEFAULT_MAX_PIXELS = 16384 * 16384  # about 16k x 16k: 3 GiB as float32 RGB


def max_pixels() -> int:
    """The largest image (width x height) refsr decodes: ``REFSR_MAX_PIXELS`` or 16384 x 16384.

    Raises:
        InputError: ``REFSR_MAX_PIXELS`` is not a positive integer.
    """
    value = os.environ.get("REFSR_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"REFSR_MAX_PIXELS={value!r}: expected a positive number of pixels, e.g. {DEFAULT_MAX_PIXELS}")
    return limit


def _read_header(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """``((width, height), EXIF orientation 1..8)`` from an encoded image's header, without
    decoding its pixels; ``(None, 1)`` when Pillow cannot parse it (OpenCV then decides)."""
    try:
        import io as _io
        import warnings

        from PIL import Image as PILImage
    except ImportError:
        return None, 1
    limit = PILImage.MAX_IMAGE_PIXELS
    try:
        PILImage.MAX_IMAGE_PIXELS = None  # refsr checks the size itself (max_pixels), with the file's name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own warnings (bombs, odd chunks) would leak to stderr
            with PILImage.open(_io.BytesIO(data)) as im:
                size = (int(im.size[0]), int(im.size[1]))
                try:
                    value = int(im.getexif().get(0x0112, 1))
                except Exception:  # an unreadable EXIF block: upright
                    value = 1
        return size, value if 1 <= value <= 8 else 1
    except Exception:  # not a format Pillow parses
        return None, 1
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PIXEL_CHUNKS = (b"tRNS",)  # the one ancillary chunk that changes decoded pixels (alpha)


def _png_pixel_chunks_only(data: bytes) -> bytes:
    """PNG bytes without the ancillary chunks that do not change the decoded pixels (colour
    profiles, text, gamma, time: libpng prints warnings about bad ones on stderr, outside
    refsr's one-line errors). EXIF orientation is read before, from the original bytes.
    Data that is not a well-formed chunk list is returned as it is (the decoder reports it)."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out, pos = [data[:8]], 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, end = data[pos + 4:pos + 8], pos + 12 + length
        if end > len(data):
            return data
        if kind[:1].isupper() or kind in PNG_PIXEL_CHUNKS:  # critical chunks (IHDR, PLTE, IDAT, IEND)
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def check_pixels(name: str | os.PathLike, width: int, height: int) -> None:
    """Refuse an image larger than :func:`max_pixels`, before it is decoded.

    Raises:
        InputError: naming the file, its size and how to raise the limit.
    """
    limit = max_pixels()
    if width * height > limit:
        raise InputError(f"{name}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the limit of "
                         f"{limit / 1e6:.0f} MP; set REFSR_MAX_PIXELS to a larger number of pixels to read it")


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip ``array`` (H, W[, C]) so that an EXIF-``orientation`` image is upright."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](array))


def decode_image(data: bytes, name: str | os.PathLike = "<bytes>") -> Image:
    """Decode encoded image bytes (PNG/JPEG/WebP/TIFF/BMP) into an :class:`Image`.

    Raises:
        InputError: empty, truncated or non-image data, or more pixels than :func:`max_pixels`
            (checked from the header, before decoding); the message names ``name``.
    """
    if len(data) == 0:
        raise InputError(f"{name}: file is empty")
    size, orientation = _read_header(data)
    if size is not None:
        check_pixels(name, *size)
    buf = np.frombuffer(_png_pixel_chunks_only(data), dtype=np.uint8)
    # IMREAD_UNCHANGED keeps 16 bits and alpha, but skips EXIF orientation: we apply it.
    try:
        array = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's own size limit or a decoder assertion: its text names no file
        raise InputError(f"{name}: not a readable image (the decoder refused it: too large or corrupt)") from None
    if array is None or array.size == 0:
        raise InputError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    check_pixels(name, array.shape[1], array.shape[0])  # formats Pillow could not size
    if array.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif array.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    elif array.dtype in (np.float32, np.float64):
        bit_depth, scale = 16, 1.0
    else:
        raise InputError(f"{name}: unsupported pixel type {array.dtype}")
    if orientation != 1:
        array = _apply_orientation(array, orientation)
    pixels = np.clip(array.astype(np.float32) / scale, 0.0, 1.0)

    alpha = None
    if pixels.ndim == 2:
        gray, rgb = True, np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] == 1:
        gray, rgb = True, np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] == 2:  # gray + alpha
        gray, rgb, alpha = True, np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1].copy()
    elif pixels.shape[2] == 3:
        gray, rgb = False, pixels[:, :, ::-1]
    elif pixels.shape[2] == 4:
        gray, rgb, alpha = False, pixels[:, :, 2::-1], pixels[:, :, 3].copy()
    else:
        raise InputError(f"{name}: unsupported channel count {pixels.shape[2]}")
    return Image(np.ascontiguousarray(rgb, dtype=np.float32), bit_depth, gray, alpha, Path(name))


def read_image(path: str | os.PathLike) -> Image:
    """Read an image file into an :class:`Image` (float32 RGB in [0, 1], upright).

    Raises:
        InputError: missing, unreadable, empty, truncated or non-image file, naming it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected an image file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    return decode_image(data, path)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Shortcut: the (H, W, 3) float32 RGB pixels in [0, 1] of an image file."""
    return read_image(path).rgb


def image_to_tensor(rgb: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0), device=None,
                    batch: bool = False):
    """The one numpy-image-to-torch conversion.

    Args:
        rgb: (H, W, C) float32 in [0, 1].
        value_range: the range the tensor's values are mapped to: ``(0, 1)`` (metrics, the
            matcher) or ``(-1, 1)`` (the VQ autoencoder and the U-Net).
        device: where the tensor goes (default: the CPU).
        batch: add a leading batch axis.

    Returns:
        (C, H, W), or (1, C, H, W) with ``batch``, float32 in ``value_range``; never sharing
        memory with ``rgb``.
    """
    import torch

    x = torch.from_numpy(np.array(rgb.transpose(2, 0, 1), order="C"))
    lo, hi = value_range
    if (lo, hi) != (0, 1):
        x = x * (hi - lo) + lo
    x = x[None] if batch else x
    return x if device is None else x.to(device)


def upsample_bicubic(rgb: np.ndarray, scale: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The one bicubic upsampling of a numpy LR image (the bicubic baseline, LR match queries,
    the matcher's evaluation): (h, w, 3) float32 in [0, 1] -> (h * scale, w * scale, 3), or to
    ``size`` (H, W), OpenCV ``INTER_CUBIC``, clipped to [0, 1]. The model's tensor twin is
    :func:`refsr.models.ldm.upsample_lr`."""
    h, w = (rgb.shape[0] * scale, rgb.shape[1] * scale) if size is None else size
    return np.clip(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def to_uint(rgb: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Round float pixels in [0, 1] to uint8 or uint16 (values outside are clipped)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    peak, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    return np.round(np.clip(rgb, 0.0, 1.0) * peak).astype(dtype)


def encode_png(
    rgb: np.ndarray,
    bit_depth: int = 8,
    gray: bool = False,
    alpha: np.ndarray | None = None,
    compression: int = 3,
) -> bytes:
    """Encode (H, W, 3) or (H, W) float32 pixels in [0, 1] as PNG bytes.

    Args:
        rgb: (H, W, 3) RGB or (H, W) gray, float in [0, 1].
        bit_depth: 8 or 16.
        gray: write a single luminance channel (the mean of RGB if three are given; for a
            gray input that was expanded to RGB this is the original channel).
        alpha: optional (H, W) float in [0, 1], written as the alpha channel.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim == 2:
        gray, luma = True, rgb
    elif rgb.ndim == 3 and rgb.shape[2] == 3:
        luma = rgb.mean(axis=2) if gray else None
    else:
        raise ValueError(f"expected (H, W, 3) or (H, W) pixels, got shape {rgb.shape}")
    if gray:
        channels = [luma]
    else:
        channels = [rgb[:, :, 2], rgb[:, :, 1], rgb[:, :, 0]]  # OpenCV wants BGR
    if alpha is not None:
        if alpha.shape != channels[0].shape:
            raise ValueError(f"alpha shape {alpha.shape} does not match image shape {channels[0].shape}")
        channels.append(np.asarray(alpha, dtype=np.float32))
    array = to_uint(np.stack(channels, axis=2) if len(channels) > 1 else channels[0], bit_depth)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    bit_depth: int = 8,
    gray: bool = False,
    alpha: np.ndarray | None = None,
) -> Path:
    """Write pixels as a PNG file at 8 or 16 bits, atomically. See :func:`encode_png`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: refsr writes PNG files; use a .png name")
    write_bytes_atomic(path, encode_png(rgb, bit_depth, gray, alpha))
    return path


def write_like(path: str | os.PathLike, rgb: np.ndarray, like: Image) -> Path:
    """Write ``rgb`` as PNG in the form of the input ``like``: its bit depth, gray-ness
    and alpha (resized to ``rgb``'s size with bicubic interpolation if needed)."""
    alpha = like.alpha
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        alpha = np.clip(cv2.resize(alpha, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)
    return write_image(path, rgb, bit_depth=like.bit_depth, gray=like.gray, alpha=alpha)


# ---------------------------------------------------------------------------------------
# Names made from input data
# ---------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """``name`` (an id, a stem, a stem plus suffix: anything taken from input data) made
    into one harmless path component, so a write under an output folder stays in it.

    Path separators (``/``, ``\\``) and NUL become ``_``; the names ``""``, ``"."`` and
    ``".."`` become ``"_"``, ``"_"`` and ``"__"``. Other names are kept as they are
    (``"a/../../b"`` -> ``"a_.._.._b"``, ``"/abs"`` -> ``"_abs"``).
    """
    cleaned = str(name).replace("/", "_").replace("\\", "_").replace("\0", "_")
    return {"": "_", ".": "_", "..": "__"}.get(cleaned, cleaned)


# ---------------------------------------------------------------------------------------
# Listing inputs
# ---------------------------------------------------------------------------------------


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    recursive: bool = False,
    manifest_key: str | None = None,
) -> list[Path]:
    """Expand files, folders and manifests into a list of image paths.

    Files are kept in the order given; a folder contributes its image files sorted by
    name (descending into subfolders if ``recursive``); a ``.jsonl`` manifest contributes
    the path stored under ``manifest_key`` of each record (resolved against the manifest's
    folder). Duplicates are dropped, keeping the first occurrence.

    Raises:
        InputError: a path that does not exist, a file that is not an image, a manifest
            given without ``manifest_key``, or nothing found at all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(sorted(p for p in path.glob(pattern) if p.is_file() and is_image_file(p)))
        elif path.suffix.lower() in MANIFEST_EXTENSIONS:
            if manifest_key is None:
                raise InputError(f"{path}: a manifest is not accepted here; give image files or folders")
            found.extend(resolve_path(path, rec[manifest_key]) for rec in read_jsonl(path))
        elif path.is_file():
            if not is_image_file(path):
                raise InputError(f"{path}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return unique


def parse_shard(spec: str | None) -> tuple[int, int]:
    """Parse ``--shard K/N`` (0 <= K < N) into ``(K, N)``; ``None`` means ``(0, 1)``."""
    if spec is None or spec == "":
        return 0, 1
    try:
        k, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like K/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"shard {spec!r} out of range: need 0 <= K < N")
    return k, n


def select_shard(items: Sequence, shard: tuple[int, int] | str | None) -> list:
    """Every N-th item starting at K: the part of ``items`` shard K/N processes."""
    k, n = parse_shard(shard) if not isinstance(shard, tuple) else shard
    return list(items[k::n])


# ---------------------------------------------------------------------------------------
# JSON Lines manifests
# ---------------------------------------------------------------------------------------

# Field name -> accepted type(s), for each manifest format of docs/architecture.md.
PAIR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "hr": str,
    "lr": str,
    "scale": int,
    "source": str,
    "crop": list,
    "seed": int,
    "degradation": dict,
}
MATCH_FIELDS: dict[str, type | tuple[type, ...]] = {"id": str, "query": str, "refs": list}
MATCH_REF_FIELDS: dict[str, type | tuple[type, ...]] = {
    "path": str,
    "box": list,
    "score": (int, float),
    "image_score": (int, float),
}


def resolve_path(manifest: str | os.PathLike, value: str) -> Path:
    """A path stored in a manifest, resolved against the manifest's folder."""
    p = Path(value)
    return p if p.is_absolute() else Path(manifest).parent / p


def relative_path(manifest: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` relative to the manifest's folder (POSIX separators), for storing."""
    return Path(os.path.relpath(Path(path).absolute(), Path(manifest).absolute().parent)).as_posix()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON Lines file: one JSON object per non-empty line.

    Raises:
        ManifestError: missing file, or a line that is not a JSON object ("file:line: ...").
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a text file (expected JSON Lines)") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        record["_line"] = lineno
        records.append(record)
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as JSON Lines, atomically (keys starting with ``_`` are dropped)."""
    with atomic_open(path) as f:
        for record in records:
            clean = {k: v for k, v in record.items() if not k.startswith("_")}
            f.write(json.dumps(clean, separators=(",", ":")) + "\n")


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", list: "list", dict: "object", bool: "boolean"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def check_fields(record: dict, fields: dict, where: str) -> None:
    """Check that ``record`` has every field of ``fields`` with the right type.

    Raises:
        ManifestError: "<where>: missing field 'x'" or "<where>: field 'x' must be ..."
    """
    for name, expected in fields.items():
        if name not in record:
            raise ManifestError(f"{where}: missing field {name!r}")
        value = record[name]
        ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)))
        if not ok:
            raise ManifestError(f"{where}: field {name!r} must be a {_type_name(expected)}, got {json.dumps(value)[:60]}")


def read_pair_manifest(path: str | os.PathLike, check_files: bool = True) -> list[dict]:
    """Read and validate a pair manifest (written by ``refsr degrade``).

    Each record gains ``hr_path`` and ``lr_path``: its images resolved against the
    manifest's folder.

    Raises:
        ManifestError: a malformed line, a missing field, a wrong type or (with
            ``check_files``) an image that does not exist, naming file and line.
    """
    records = read_jsonl(path)
    if not records:
        raise ManifestError(f"{path}: manifest is empty")
    seen: dict[str, int] = {}
    for rec in records:
        where = f"{path}:{rec['_line']}"
        check_fields(rec, PAIR_FIELDS, where)
        if rec["id"] in seen:
            raise ManifestError(f"{where}: duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
        seen[rec["id"]] = rec["_line"]
        if rec["scale"] < 1:
            raise ManifestError(f"{where}: field 'scale' must be a positive integer, got {rec['scale']}")
        for key in ("hr", "lr"):
            rec[f"{key}_path"] = resolve_path(path, rec[key])
            if check_files and not rec[f"{key}_path"].is_file():
                raise ManifestError(f"{where}: {key} image {rec[key]!r} does not exist ({rec[f'{key}_path']})")
    return records


def read_matches(path: str | os.PathLike, check_files: bool = True) -> list[dict]:
    """Read and validate a matches file (written by ``refsr match``).

    Each reference gains ``abs_path`` (resolved against the matches file's folder).

    Raises:
        ManifestError: a malformed line, a missing field, a wrong type or (with
            ``check_files``) a reference image that does not exist, naming file and line.
    """
    records = read_jsonl(path)
    for rec in records:
        where = f"{path}:{rec['_line']}"
        check_fields(rec, MATCH_FIELDS, where)
        for i, ref in enumerate(rec["refs"]):
            if not isinstance(ref, dict):
                raise ManifestError(f"{where}: refs[{i}] must be an object")
            check_fields(ref, MATCH_REF_FIELDS, f"{where}: refs[{i}]")
            if len(ref["box"]) != 4 or not all(isinstance(v, int) for v in ref["box"]):
                raise ManifestError(f"{where}: refs[{i}]: box must be [x, y, w, h] integers, got {ref['box']}")
            ref["abs_path"] = resolve_path(path, ref["path"])
            if check_files and not ref["abs_path"].is_file():
                raise ManifestError(f"{where}: refs[{i}]: reference image {ref['path']!r} does not exist")
    return records


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Weights files (safetensors, or weights-only torch checkpoints: never unpickled)
# ---------------------------------------------------------------------------------------


def hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub`` caches the file of ``url``: ``<torch hub dir>/checkpoints/<name>``
    (the one lookup of torchvision/torch-hub weights; nothing is ever downloaded)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_weights(path: str | os.PathLike, what: str | None = None, error: type[RefSRError] = InputError):
    """The one reader of a weights file: a safetensors file (a dict of tensors) or a
    weights-only torch checkpoint (``torch.load(weights_only=True)``: never unpickled,
    whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says), returned as stored.

    Args:
        what (`str`, optional): what the weights are for, named in the message ("FID (Inception)").
        error (`type`, defaults to `InputError`): the error raised, the caller's choice
            (the metrics raise ``BadWeightsError``: only that metric becomes unavailable).

    Raises:
        error: a missing file, or one that cannot be read as either, naming it.
    """
    import torch

    path = Path(path)
    name = f"{what} weights {path}" if what else f"weights file {path}"
    if not path.is_file():
        raise error(f"{path}: weights file not found" if not what else f"{name} not found")
    safetensors = path.suffix == ".safetensors"
    try:
        if safetensors:
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        kind = "a safetensors file" if safetensors else "a weights-only checkpoint"
        raise error(f"{name} cannot be read as {kind} ({type(e).__name__}); replace it with the published file") from None


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Tensors of a weights file (:func:`read_weights`) as a ``state_dict``: a ``state_dict``
    wrapper and a ``module.`` prefix (DDP) are removed.

    Raises:
        InputError: a missing file, one that is not a weights file, or not a dict of tensors.
    """
    sd = read_weights(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InputError(f"{path}: expected a dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_state(module, state_dict: dict, path, what: object):
    """``module.load_state_dict(state_dict, strict=False)``; wrong-shaped tensors are a
    one-line InputError naming ``path`` instead of torch's multi-line RuntimeError."""
    try:
        return module.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
        raise InputError(f"{path}: weights do not fit {what} ({detail})") from None


def load_weights_into(module, path: str | os.PathLike, what: object, state_dict: dict | None = None):
    """Load the weights file ``path`` (or ``state_dict``, read from it by the caller) into
    ``module``, every key fitting, and return it.

    Raises:
        InputError: weights that do not fit ``module`` (``what`` describes it), one line.
    """
    result = load_state(module, load_state_dict_file(path) if state_dict is None else state_dict, path, what)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{path}: weights do not fit {what} (missing {result.missing_keys[:2]}, "
                         f"unexpected {result.unexpected_keys[:2]})")
    return module
