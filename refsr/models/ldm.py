"""The refsr model: LDM-SR (``ldm``) and LDM-SR with the reference branch (``ldm-ca``).

Convention (diffusers ``LDMSuperResolutionPipeline``): the LR image in [-1, 1] is
concatenated to the latents on the channel axis and decoding is
``vqvae.decode(latents).sample`` clamped to [-1, 1]. On top of it, a refsr model may scale
its latents to unit variance and decode without the quantiser (``latent_scale``,
``decode_quantized`` in ``model_index.json``; see :class:`refsr.models.autoencoder.LatentSpec`);
LDM-SR folders have scale 1 and quantised decoding, so they give the pipeline's output.

A model folder is a :class:`refsr.models.pipeline.RefSRPipeline` folder (``model_index.json``,
``vqvae/``, ``unet/``, ``scheduler/``, ``ref_branch/`` for ``ldm-ca``): ``save_pretrained``
and ``from_pretrained`` go through the pipeline, which holds the same component objects.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import KINDS, PREDICTION_TYPES
from ..errors import InputError
from .autoencoder import LatentSpec, build_vqvae, init_keywords, vq_downsampling
from .ref_branch import AGGREGATIONS, LRContext, RefContext, branch_for

log = logging.getLogger("refsr.models")

MODEL_FORMAT = "refsr.model/1"  # the ``format`` of ``refsr.json`` in folders before model_index.json
CONFIG_DIR = Path(__file__).parent / "configs"

# LDM-SR's noise schedule (CompVis ldm-super-resolution-4x-openimages)
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0155,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
}
TOP_KEYS = {"scale", "patch_size", "ref_size", "max_refs", "vqvae", "unet", "ref_branch", "scheduler", "train"}
REF_BRANCH_KEYS = {"ca_levels", "head_dim", "aggregation"}
TRAIN_DEFAULTS = {
    "lr": 1e-4,
    "batch_size": 8,
    "warmup_steps": 100,
    "ema_decay": 0.999,
    "lr_schedule": "cosine",
    "grad_clip": 1.0,
    "ref_dropout": 0.1,
    "commit_weight": 1.0,
    "lpips_weight": 1.0,
    "disc_start": -1,
    "disc_weight": 0.5,
    "validate_every": 500,
    "min_snr_gamma": 0.0,
}


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------


def list_configs() -> list[str]:
    """Names of the configs shipped in the package (``tiny``, ``small``, ``paper``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(config: str | os.PathLike | dict) -> dict:
    """A validated model config from a shipped name, a JSON/YAML file or a dict.

    Keys starting with ``_`` are comments. Missing ``train`` keys get defaults.

    Raises:
        InputError: unknown name or file, unreadable file, unknown key (named).
    """
    source = "config"
    if isinstance(config, dict):
        raw = dict(config)
    else:
        path = Path(config)
        if str(config) in list_configs():
            path = CONFIG_DIR / f"{config}.json"
        elif not path.is_file():
            raise InputError(f"config {str(config)!r} is neither a file nor one of {', '.join(list_configs())}")
        raw, source = _read_config_file(path), str(path)
    return _validate_config(raw, source)


def _read_config_file(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            import json

            raw = json.loads(text)
    except Exception as e:
        raise InputError(f"{path}: not a valid config file ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a config must be a mapping of keys to values")
    return raw


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    for key in section:
        if not key.startswith("_") and key not in allowed:
            raise InputError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _validate_config(raw: dict, source: str) -> dict:
    from diffusers import UNet2DModel, VQModel

    _check_keys(raw, TOP_KEYS, source)
    for key in ("vqvae", "unet"):
        if not isinstance(raw.get(key), dict):
            raise InputError(f"{source}: missing section {key!r}")
    _check_keys(raw["vqvae"], init_keywords(VQModel), f"{source}: vqvae")
    _check_keys(raw["unet"], init_keywords(UNet2DModel), f"{source}: unet")
    _check_keys(raw.get("ref_branch", {}), REF_BRANCH_KEYS, f"{source}: ref_branch")
    _check_keys(raw.get("train", {}), set(TRAIN_DEFAULTS), f"{source}: train")
    aggregation = raw.get("ref_branch", {}).get("aggregation", "mean")
    if aggregation not in AGGREGATIONS:
        raise InputError(f"{source}: ref_branch.aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    cfg.setdefault("scale", 4)
    cfg.setdefault("patch_size", 256)
    cfg.setdefault("ref_size", cfg["patch_size"])
    cfg.setdefault("max_refs", 10)
    cfg.setdefault("ref_branch", {})
    cfg["scheduler"] = {**SCHEDULER_CONFIG, **cfg.get("scheduler", {})}
    if cfg["scheduler"]["prediction_type"] not in PREDICTION_TYPES:
        raise InputError(f"{source}: scheduler.prediction_type {cfg['scheduler']['prediction_type']!r} "
                         f"is not one of {', '.join(PREDICTION_TYPES)}")
    cfg["train"] = {**TRAIN_DEFAULTS, **cfg.get("train", {})}
    latent = cfg["vqvae"].get("latent_channels", 3)
    cfg["unet"] = {**cfg["unet"], "in_channels": latent + 3, "out_channels": latent}
    if "sample_size" not in cfg["unet"]:
        cfg["unet"]["sample_size"] = cfg["patch_size"] // cfg["scale"]
    return cfg


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class RefSRModel(nn.Module):
    """VQ autoencoder + denoising U-Net (+ reference branch for ``ldm-ca``).

    Attributes:
        kind (`str`): ``"ldm"`` or ``"ldm-ca"``.
        vqvae (`VQModel`): f=4 autoencoder. unet (`UNet2DModel`): in_channels = latent + 3.
        ref_branch (`RefBranch` or `None`): None for ``ldm``.
        scheduler_config (`dict`): a DDPMScheduler config (its ``prediction_type`` says what the
            U-Net predicts: ``epsilon`` or ``v_prediction``). scale, patch_size, ref_size (`int`).
        latent (`LatentSpec`): latent scale and quantised/continuous decoding.
    """

    def __init__(self, vqvae, unet, ref_branch=None, scheduler_config=None, kind="ldm-ca",
                 scale=4, patch_size=256, ref_size=256, max_refs=10, latent: LatentSpec | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"model kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "ldm-ca" and ref_branch is None:
            raise ValueError("model kind 'ldm-ca' needs a reference branch")
        self.kind, self.vqvae, self.unet, self.ref_branch = kind, vqvae, unet, ref_branch
        self.scheduler_config = dict(scheduler_config or SCHEDULER_CONFIG)
        self.scale, self.patch_size, self.ref_size, self.max_refs = int(scale), int(patch_size), int(ref_size), int(max_refs)
        self.latent = latent or LatentSpec()
        self.recipe: dict = {}  # how it was trained (e.g. min_snr_gamma), kept in model_index.json
        check_compatible(vqvae, unet, scale)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config="tiny", kind: str = "ldm-ca") -> "RefSRModel":
        """A randomly initialised model from a config name, file or dict (see ``load_config``)."""
        from diffusers import UNet2DModel

        cfg = load_config(config)
        vqvae = build_vqvae(cfg["vqvae"])
        unet = UNet2DModel(**cfg["unet"])
        branch = None
        if kind == "ldm-ca":
            branch = branch_for(unet, **cfg["ref_branch"])
        return cls(vqvae, unet, branch, cfg["scheduler"], kind, cfg["scale"], cfg["patch_size"],
                   cfg["ref_size"], cfg["max_refs"])

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "RefSRModel":
        """Load a model folder: a ``RefSRPipeline`` folder, the older refsr layout (``refsr.json``)
        or any diffusers LDM-SR folder (kind ``ldm``, scale 4). Hub ids are resolved to a local
        folder by :func:`refsr.sample.loading.resolve_model_path`.

        Raises:
            InputError: the folder or one of its parts (named) is missing.
        """
        from .pipeline import RefSRPipeline

        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: model folder not found")
        for part in ("vqvae", "unet"):
            if not (path / part / "config.json").is_file():
                raise InputError(f"{path}: not a model folder ({part}/config.json is missing)")
        from diffusers.utils import logging as diffusers_logging

        quiet = not diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar
        try:
            model = RefSRPipeline.from_pretrained(path).to_model()
        finally:
            if not quiet:
                diffusers_logging.enable_progress_bar()
        return model.to(device=device, dtype=dtype) if (device or dtype) else model

    def save_pretrained(self, path) -> None:
        """Write the model folder (:meth:`pipeline`'s ``save_pretrained``: ``model_index.json`` +
        component folders, safetensors). The folder appears whole: it is written beside ``path``
        and renamed into place."""
        import shutil

        from ..io import replace_dir, temp_dir_beside

        path = Path(path)
        tmp = temp_dir_beside(path)
        try:
            self.pipeline().save_pretrained(tmp, safe_serialization=True)
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def pipeline(self):
        """A :class:`refsr.models.pipeline.RefSRPipeline` holding these component objects (not
        copies), a DDPM scheduler of ``scheduler_config`` and :meth:`meta` as its settings."""
        from diffusers import DDPMScheduler

        from .pipeline import RefSRPipeline

        scheduler = DDPMScheduler(**_scheduler_kwargs(self.scheduler_config))
        return RefSRPipeline(self.vqvae, self.unet, scheduler, self.ref_branch, **self.meta())

    def meta(self) -> dict:
        """The refsr settings of the folder (the ``RefSRPipeline`` config in ``model_index.json``)."""
        return {"kind": self.kind, "scale": self.scale, "patch_size": self.patch_size, "ref_size": self.ref_size,
                "max_refs": self.max_refs, "latent_scale": self.latent.scale,
                "decode_quantized": self.latent.decode_quantized, "recipe": dict(self.recipe)}

    # -- encoders -------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> (B, C, H/4, W/4) latents (before quantisation),
        times ``latent.scale``: the space the denoiser works in."""
        z = self.vqvae.encode(images).latents
        return z * self.latent.scale if self.latent.scale != 1.0 else z

    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """(B, C, h, w) latents of :meth:`encode` -> (B, 3, 4h, 4w) float in [-1, 1]: divided by
        the latent scale, quantised unless ``latent.decode_quantized`` is off, decoded, clamped
        (``clamp=False``: not, for a training loss whose gradient must reach every pixel)."""
        if self.latent.scale != 1.0:
            latents = latents / self.latent.scale
        out = self.vqvae.decode(latents, force_not_quantize=not self.latent.decode_quantized).sample
        return out.clamp(-1.0, 1.0) if clamp else out

    def branch_input(self, images: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C+3, H/4, W/4): frozen VQ latent || image at latent size
        (the input of E_LR and E_Ref). ``latents``: ``encode(images)`` if already computed."""
        if latents is None:
            with torch.no_grad():
                latents = self.encode(images)
        small = F.interpolate(images, size=latents.shape[-2:], mode="area")
        return torch.cat([latents, small], dim=1)

    def encode_lr(self, lr_up: torch.Tensor | None = None, inputs: torch.Tensor | None = None) -> LRContext | None:
        """(B, 3, H, W) bicubic-upsampled LR at HR size in [-1, 1] (or its ``branch_input``,
        ``inputs``) -> the LR side of the queries (None for kind ``ldm``). No timestep:
        compute once per image or tile."""
        if self.ref_branch is None:
            return None
        return self.ref_branch.encode_lr(self.branch_input(lr_up) if inputs is None else inputs)

    def encode_references(self, refs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                          inputs: torch.Tensor | None = None) -> RefContext | None:
        """refs (B, R, 3, S, S) in [-1, 1] (or their E_Ref inputs ``inputs`` (B, R, C+3, S/4, S/4),
        see :meth:`branch_input`), mask (B, R) bool (True = real) -> per-level keys and values,
        reused at every denoising step. R may be 0. None for kind ``ldm``."""
        if self.ref_branch is None:
            return None
        given = refs if inputs is None else inputs
        b, r = given.shape[:2]
        if mask is None:
            mask = torch.ones(b, r, dtype=torch.bool, device=given.device)
        mask = mask.to(device=given.device, dtype=torch.bool)
        if inputs is None:
            lat = refs.shape[-1] // vq_downsampling(self.vqvae)
            inputs = refs.new_zeros(b, r, self.vqvae.config.latent_channels + 3, lat, lat)
            if mask.any():
                inputs[mask] = self.branch_input(refs[mask])
        return self.ref_branch.encode_refs(inputs, mask)

    # -- denoiser -------------------------------------------------------------------

    def forward(self, noisy_latents, timesteps, lr, lr_context=None, ref_context=None) -> torch.Tensor:
        """Predicted noise (B, C, h, w) for noisy latents (B, C, h, w), timesteps (B,) long
        and the LR image (B, 3, h', w') in [-1, 1] (resized to (h, w) if needed)."""
        if lr.shape[-2:] != noisy_latents.shape[-2:]:
            lr = upsample_lr(lr, size=noisy_latents.shape[-2:])
        x = torch.cat([noisy_latents, lr.to(noisy_latents.dtype)], dim=1)
        if self.ref_branch is None or ref_context is None or not ref_context.any_real:  # no host sync
            return self.unet(x, timesteps).sample
        if lr_context is None:
            lr_context = self.encode_lr(upsample_lr(lr, self.scale))
        hook = lambda i, h: self.ref_branch.inject(i, h, lr_context, ref_context)  # noqa: E731
        return unet_forward(self.unet, x, timesteps, decoder_hook=hook)


def upsample_lr(lr: torch.Tensor, scale: int | None = None, size: tuple[int, int] | None = None,
                value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """The one bicubic LR upsampling of the tensors of refsr (the model's LR input and E_LR in
    training and sampling, the matcher's LR queries in training): (B, 3, h, w) in
    ``value_range`` -> (B, 3, h * scale, w * scale), or to ``size`` (H, W), bicubic
    (``align_corners=False``) and clamped to ``value_range``. Its numpy twin for [0, 1]
    images is :func:`refsr.io.upsample_bicubic` (OpenCV's, for baselines and LR queries)."""
    if size is not None:
        up = F.interpolate(lr, size=tuple(size), mode="bicubic", align_corners=False)
    else:
        up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(*value_range)


def unet_forward(unet, sample: torch.Tensor, timestep, decoder_hook=None) -> torch.Tensor:
    """``UNet2DModel.forward`` (diffusers 0.42), step for step, with a hook in the decoder.

    ``decoder_hook(i, h) -> h`` may change the decoder features entering up block ``i``
    (``i = len(up_blocks)``: the output of the last up block). With no hook (or one
    returning ``h``) the result equals ``unet(sample, timestep).sample``.
    """
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    # 1. time embedding
    t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], dtype=torch.long, device=sample.device)
    t = t[None].to(sample.device) if t.dim() == 0 else t
    t = t * torch.ones(sample.shape[0], dtype=t.dtype, device=t.device)
    emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
    if unet.class_embedding is not None:
        raise ValueError("class-conditioned U-Nets are not supported by the reference branch")
    # 2. pre-process, 3. down
    skip_sample = sample
    sample = unet.conv_in(sample)
    res = (sample,)
    for block in unet.down_blocks:
        if hasattr(block, "skip_conv"):
            sample, res_samples, skip_sample = block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
        else:
            sample, res_samples = block(hidden_states=sample, temb=emb)
        res += res_samples
    # 4. mid
    if unet.mid_block is not None:
        sample = unet.mid_block(sample, emb)
    # 5. up, with the hook before each block and after the last
    skip_sample = None
    for i, block in enumerate(unet.up_blocks):
        if decoder_hook is not None:
            sample = decoder_hook(i, sample)
        res_samples, res = res[-len(block.resnets):], res[: -len(block.resnets)]
        if hasattr(block, "skip_conv"):
            sample, skip_sample = block(sample, res_samples, emb, skip_sample)
        else:
            sample = block(sample, res_samples, emb)
    if decoder_hook is not None:
        sample = decoder_hook(len(unet.up_blocks), sample)
    # 6. post-process
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    if skip_sample is not None:
        sample += skip_sample
    if unet.config.time_embedding_type == "fourier":
        sample = sample / t.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
    return sample


def check_compatible(vqvae, unet, scale: int) -> None:
    """Raise InputError if the VQ's latent size or factor does not fit the U-Net / scale."""
    latent = int(vqvae.config.latent_channels)
    if int(unet.config.in_channels) != latent + 3 or int(unet.config.out_channels) != latent:
        raise InputError(f"the VQ autoencoder has {latent} latent channels but the U-Net expects "
                         f"{unet.config.in_channels} input channels (latent + 3) and {unet.config.out_channels} outputs")
    if vq_downsampling(vqvae) != scale:
        raise InputError(f"the VQ autoencoder downsamples by {vq_downsampling(vqvae)}, the model's scale is {scale}")


def _scheduler_kwargs(cfg: dict) -> dict:
    from diffusers import DDPMScheduler

    from .autoencoder import init_keywords

    keys = init_keywords(DDPMScheduler)
    return {k: v for k, v in cfg.items() if k in keys}
