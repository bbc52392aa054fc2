"""The refsr model folder as a diffusers pipeline: :class:`RefSRPipeline`.

A model folder is what ``RefSRPipeline.save_pretrained`` writes: ``model_index.json`` (the
components as ``[library, class]`` and the refsr settings), ``vqvae/``, ``unet/``,
``scheduler/`` and, for kind ``ldm-ca``, ``ref_branch/`` (diffusers ``config.json`` +
safetensors each). ``DiffusionPipeline.from_pretrained(folder)`` (once ``refsr.models`` is
imported) and ``RefSRPipeline.from_pretrained(folder or hub id)`` load it.

The pipeline is the folder format; :class:`refsr.models.ldm.RefSRModel` is the ``nn.Module``
the trainer and the sampler use, made from the same component objects
(:meth:`RefSRPipeline.to_model`, :meth:`RefSRModel.pipeline`). Denoising is in
``refsr.sample`` (one loop for sampling and validation), so the pipeline has no ``__call__``.

Older folders load through :meth:`RefSRPipeline.from_pretrained` too: the refsr layout
before ``model_index.json`` (``refsr.json`` + the same subfolders) and diffusers LDM-SR
folders (``LDMSuperResolutionPipeline``, no refsr settings: kind ``ldm``, scale 4).
"""

from __future__ import annotations

import logging
from pathlib import Path

import diffusers
from diffusers import DiffusionPipeline

from ..constants import KINDS
from ..errors import InputError
from .autoencoder import LatentSpec, latent_spec_or_default

log = logging.getLogger("refsr.models")

PIPELINE_CLASS = "RefSRPipeline"


class RefSRPipeline(DiffusionPipeline):
    """The components of a refsr model and its settings.

    Args:
        vqvae (`VQModel`): the f=4 autoencoder. unet (`UNet2DModel`): in_channels = latent + 3.
        scheduler (`SchedulerMixin`): its config's ``prediction_type`` says what the U-Net predicts.
        ref_branch (`RefBranch`, *optional*): None for kind ``ldm``.
        kind (`str`, defaults to ``"ldm"``): ``"ldm"`` or ``"ldm-ca"``.
        scale (`int`, defaults to 4): the super-resolution factor (the VQ's factor).
        patch_size (`int`, *optional*): the training patch (HR pixels); None: 4x the U-Net's sample size.
        ref_size (`int`, *optional*): the reference size; None: ``patch_size``.
        max_refs (`int`, defaults to 10): references per image.
        latent_scale (`float`, defaults to 1), decode_quantized (`bool`, defaults to True): the
            latent settings (:class:`refsr.models.autoencoder.LatentSpec`).
        recipe (`dict`, *optional*): how it was trained (e.g. ``min_snr_gamma``).
    """

    _optional_components = ["ref_branch"]

    def __init__(self, vqvae, unet, scheduler, ref_branch=None, kind: str = "ldm", scale: int = 4,
                 patch_size: int | None = None, ref_size: int | None = None, max_refs: int = 10,
                 latent_scale: float = 1.0, decode_quantized: bool = True, recipe: dict | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"model kind {kind!r} is not one of {', '.join(KINDS)}")
        self.register_modules(vqvae=vqvae, unet=unet, scheduler=scheduler, ref_branch=ref_branch)
        self.register_to_config(kind=kind, scale=scale, patch_size=patch_size, ref_size=ref_size, max_refs=max_refs,
                                latent_scale=latent_scale, decode_quantized=decode_quantized, recipe=recipe or {})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "RefSRPipeline":
        """diffusers' ``from_pretrained`` (a folder with a ``RefSRPipeline`` ``model_index.json``,
        or a hub id); a local folder of an older layout is read by :func:`read_folder_parts`."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir() and folder_class(path) != PIPELINE_CLASS:
            return read_folder_parts(path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to_model(self):
        """A :class:`refsr.models.ldm.RefSRModel` holding these component objects (not copies)."""
        from .ldm import RefSRModel

        c = self.config
        patch = c.patch_size or 4 * int(self.unet.config.sample_size or 64)
        model = RefSRModel(self.vqvae, self.unet, self.ref_branch,
                           {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")},
                           c.kind, c.scale, patch, c.ref_size or patch, c.max_refs,
                           LatentSpec(float(c.latent_scale), bool(c.decode_quantized)))
        model.recipe = dict(c.recipe or {})
        return model


# Let ``DiffusionPipeline.from_pretrained`` find the class named in ``model_index.json``: it looks
# pipeline classes up by name on the ``diffusers`` module.
if not hasattr(diffusers, PIPELINE_CLASS):
    setattr(diffusers, PIPELINE_CLASS, RefSRPipeline)


def folder_class(path: Path) -> str | None:
    """``_class_name`` of ``path/model_index.json``, or None without one."""
    from ..io import read_json

    index = path / "model_index.json"
    return read_json(index).get("_class_name") if index.is_file() else None


def read_folder_parts(path: Path) -> RefSRPipeline:
    """A pipeline from the subfolders of an older folder: the refsr layout before
    ``model_index.json`` (settings in ``refsr.json``) or a diffusers LDM-SR folder.

    Raises:
        InputError: a missing part or an unknown kind, named.
    """
    from diffusers import UNet2DModel, VQModel

    from .ldm import SCHEDULER_CONFIG
    from .ref_branch import RefBranch

    for part in ("vqvae", "unet"):
        if not (path / part / "config.json").is_file():
            raise InputError(f"{path}: not a model folder ({part}/config.json is missing)")
    meta = _read_meta(path)
    branch = None
    if meta["kind"] == "ldm-ca":
        if not (path / "ref_branch" / "config.json").is_file():
            raise InputError(f"{path}: kind 'ldm-ca' but ref_branch/config.json is missing")
        branch = RefBranch.from_pretrained(path / "ref_branch")
    sched = _read_scheduler(path, SCHEDULER_CONFIG)
    latent = _latent_spec(path, meta)
    return RefSRPipeline(VQModel.from_pretrained(path / "vqvae"), UNet2DModel.from_pretrained(path / "unet"),
                         sched, branch, meta["kind"], meta.get("scale", 4),
                         meta.get("patch_size"), meta.get("ref_size"), meta.get("max_refs", 10),
                         latent.scale, latent.decode_quantized, meta.get("recipe"))


def folder_latent_spec(path) -> LatentSpec:
    """The latent settings of the model folder ``path``, read from its settings files without
    loading any weights: ``model_index.json`` of a ``RefSRPipeline`` folder, else as
    :func:`read_folder_parts` reads an older folder."""
    from ..io import read_json

    path = Path(path)
    meta = read_json(path / "model_index.json") if folder_class(path) == PIPELINE_CLASS else _read_meta(path)
    return _latent_spec(path, meta)


def _read_meta(path: Path) -> dict:
    from ..io import read_json

    if (path / "refsr.json").is_file():
        meta = read_json(path / "refsr.json")
        if meta.get("kind") not in KINDS:
            raise InputError(f"{path / 'refsr.json'}: unknown model kind {meta.get('kind')!r}")
        return meta
    return {"kind": "ldm", "scale": 4}  # a plain diffusers LDM-SR folder


def _latent_spec(path: Path, meta: dict) -> LatentSpec:
    """The latent settings in a folder's settings ``meta`` (``model_index.json`` or an older
    folder's ``refsr.json``), else ``vqvae/refsr_latent.json``, else scale 1 with quantised
    decoding (said once per folder)."""
    if "latent_scale" in meta:
        return LatentSpec(float(meta["latent_scale"]), bool(meta.get("decode_quantized", True)))
    return latent_spec_or_default(path / "vqvae", owner=path)


def _read_scheduler(path: Path, default: dict):
    """The scheduler of ``path/scheduler/`` as the class its config names (DDPM if unknown),
    else LDM-SR's schedule."""
    from diffusers import DDPMScheduler

    from ..io import read_json

    for name in ("scheduler/scheduler_config.json", "scheduler/config.json"):
        if (path / name).is_file():
            config = read_json(path / name)
            cls = getattr(diffusers, str(config.get("_class_name", "")), None) or DDPMScheduler
            return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    log.info("%s: no scheduler/ folder; using LDM-SR's schedule", path)
    return DDPMScheduler(**default)
