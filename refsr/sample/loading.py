"""Finding and loading the model for ``refsr sample``: a folder, a hub name, or the default."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputError, MissingWeightsError

log = logging.getLogger(__name__)

MODEL_MARKERS = ("refsr.json", "model_index.json")


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in MODEL_MARKERS)


def default_model_path() -> Path:
    """The model shipped inside the package under ``refsr/weights/``.

    Either ``refsr/weights/`` itself is a model folder (``refsr.json`` or
    ``model_index.json``), or it holds exactly one such subfolder.

    Raises:
        MissingWeightsError: no shipped model (one line saying to pass ``--model``).
    """
    root = Path(__file__).resolve().parents[1] / "weights"
    if _is_model_folder(root):
        return root
    candidates = sorted(p for p in root.glob("*") if _is_model_folder(p)) if root.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise InputError(f"{root}: holds several models ({', '.join(p.name for p in candidates)}); pass --model DIR")
    raise MissingWeightsError(
        f"no default model shipped in {root}; pass --model DIR (a folder from `refsr train` or a "
        "diffusers LDM super-resolution folder such as CompVis/ldm-super-resolution-4x-openimages)"
    )


def resolve_model_path(spec: str | os.PathLike | None) -> Path:
    """A local model folder for ``spec``: a folder, a Hugging Face repo id, or the default.

    A name that is not a local folder is looked up in the Hugging Face cache first and
    downloaded only when the hub is reachable (``HF_HUB_OFFLINE`` unset).

    Raises:
        MissingWeightsError: not a folder, not cached, and cannot be downloaded (one line).
        InputError: ``spec`` is a file, not a folder.
    """
    if spec is None:
        return default_model_path()
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path}: is a file; --model expects a model folder")
    name = str(spec)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise MissingWeightsError(f"{name}: no such model folder (and not a Hugging Face repo id like org/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if not offline:
        try:
            log.info("downloading %s from the Hugging Face hub", name)
            return Path(snapshot_download(repo_id=name))
        except Exception as e:  # no network, unknown repo, ...
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise MissingWeightsError(
                f"model {name!r} is not a local folder, not in the Hugging Face cache, and could not be "
                f"downloaded ({reason}); run `huggingface-cli download {name}` where there is network, or pass --model DIR"
            ) from None
    raise MissingWeightsError(
        f"model {name!r} is not a local folder nor in the Hugging Face cache (offline); run "
        f"`huggingface-cli download {name}` where there is network, or pass --model DIR"
    )


def load_model(spec=None, device=None):
    """Load a :class:`refsr.models.ldm.RefSRModel` (fp32 weights, eval mode) from ``spec``; on
    the CPU with its convolution weights channels-last (:func:`refsr.device.prefer_channels_last`).

    Raises:
        InputError: a model folder missing a part (from ``RefSRModel.from_pretrained``).
        MissingWeightsError: see :func:`resolve_model_path`.
    """
    from ..device import prefer_channels_last
    from ..models.ldm import RefSRModel

    path = resolve_model_path(spec)
    model = RefSRModel.from_pretrained(path, device=device)
    model.eval().requires_grad_(False)
    return prefer_channels_last(model), path
