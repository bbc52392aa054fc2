"""Stage ``diffusion``: the denoising U-Net (+ reference branch) on a frozen VQ autoencoder.

Loss: ``w(t) || target - f_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, LR, refs) ||^2`` with
LDM-SR's schedule, z0 the scaled VQ latent (before quantisation) of the HR patch, and the
target of the model's ``prediction_type``: ``eps`` (DDPM, Ho et al. 2020, eq. 14; LDM-SR) or
``v = sqrt(a_t) eps - sqrt(1 - a_t) z0`` (Salimans & Ho 2022, Sec. 4; the Stable Diffusion x4
upscaler). ``w(t) = 1``, or with min-SNR-gamma weighting (Hang et al. 2023, eq. 8)
``min(SNR_t, gamma) / SNR_t`` for eps and ``min(SNR_t, gamma) / (SNR_t + 1)`` for v.

Training as sampling starts (``lr_start_fraction`` > 0): ``refsr sample --start-strength``
begins from the noised latent of the bicubic-upsampled LR, ``z_lr``, not of the HR. That
fraction of the samples is noised from ``z_lr`` instead, ``x_t = sqrt(a_t) z_lr + sqrt(1 - a_t)
eps``, with the target of the same ``x_t`` read as a noised HR latent: the noise
``(x_t - sqrt(a_t) z0) / sqrt(1 - a_t)`` (:func:`lr_start_noise`), so the model's estimate of
z0 from such an ``x_t`` is regressed onto the HR latent. Those samples draw timesteps from the
upper half of the range only, where sampling starts (at small t that target noise grows as
``1 / sqrt(1 - a_t)``).

A pixel loss (``pixel_loss_weight`` W > 0) adds ``W || Y(D(z0_hat)) - Y(HR) ||^2``: the model's
estimate of z0 (:func:`predicted_z0`) decoded by the frozen VQ decoder, compared with the HR
patch in BT.601 luma (:func:`luma_difference`), what ``refsr evaluate``'s PSNR measures and
``--color-fix luma`` keeps; the latent loss alone weighs every latent element equally, whatever
the decoder makes of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, OptionError
from ..models.autoencoder import LatentSpec, latent_spec_or_default
from ..models.ldm import PREDICTION_TYPES, RefSRModel, _scheduler_kwargs, check_compatible, load_config, upsample_lr
from ..models.ref_branch import branch_for, with_levels
from ..sample.core import start_strength_for
from .data import PairDataset
from .loop import Stage, save_grid

log = logging.getLogger("refsr.train")


def resolve_vqvae_dir(path) -> Path:
    """The ``VQModel`` folder inside a run (RUN/model/vqvae), a model folder (DIR/vqvae) or
    ``path`` itself. Raises InputError if none holds a config.json."""
    path = Path(path)
    for cand in (path / "model" / "vqvae", path / "vqvae", path):
        if (cand / "config.json").is_file():
            return cand
    raise InputError(f"{path}: no VQ autoencoder found (looked for model/vqvae/, vqvae/ and config.json)")


def vq_latent_spec(path) -> LatentSpec:
    """The latent settings that go with the VQ of ``path`` (as :func:`resolve_vqvae_dir`): a
    model folder's own, as the model loads them (a model's ``vqvae/`` has no settings file of
    its own), else the VQ folder's ``refsr_latent.json``, else scale 1 with quantised decoding
    (said once). Reads settings files only, no weights."""
    from ..models.pipeline import folder_latent_spec

    path = Path(path)
    for folder in (path / "model", path):
        if (folder / "unet" / "config.json").is_file() and (folder / "vqvae" / "config.json").is_file():
            return folder_latent_spec(folder)
    return latent_spec_or_default(resolve_vqvae_dir(path))


def load_vqvae(path):
    from diffusers import VQModel

    folder = resolve_vqvae_dir(path)
    try:
        return VQModel.from_pretrained(folder)
    except Exception as e:
        raise InputError(f"{folder}: not a loadable VQModel ({str(e).splitlines()[0][:120]})") from None


def build_model(config, kind: str, vqvae_dir=None, init_from=None, prediction_type: str | None = None,
                ca_levels=None) -> RefSRModel:
    """The model to train: from ``init_from`` (a diffusers LDM-SR or refsr folder: its unet/,
    vqvae/ and, for ``ldm-ca``, its trained ref_branch/ when it has one) or from ``config``,
    with the VQ of ``vqvae_dir`` if given (and its latent settings). ``prediction_type``
    overrides the config's (or the initial model's); ``ca_levels`` the config's decoder
    positions with cross-attention, or adds positions to a trained branch (:func:`with_levels`).

    Raises:
        InputError: a VQ whose latent size or factor does not fit the U-Net.
        ValueError: an unknown prediction type; OptionError: ``ca_levels`` that drop a trained level.
    """
    cfg = load_config(config)
    branch = None
    if init_from is not None:
        base = RefSRModel.from_pretrained(init_from)
        vqvae, unet, latent, branch = base.vqvae, base.unet, base.latent, base.ref_branch
        sched, scale = base.scheduler_config, base.scale
    else:
        base = RefSRModel.from_config(cfg, kind="ldm")
        vqvae, unet, sched, scale, latent = base.vqvae, base.unet, cfg["scheduler"], cfg["scale"], LatentSpec()
    if prediction_type is not None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        sched = {**sched, "prediction_type": prediction_type}
    if vqvae_dir is not None:
        vqvae, latent = load_vqvae(vqvae_dir), vq_latent_spec(vqvae_dir)
        try:
            check_compatible(vqvae, unet, scale)
        except InputError as e:
            raise InputError(f"{resolve_vqvae_dir(vqvae_dir)}: {e}") from None
    if kind != "ldm-ca":
        branch = None
    elif branch is None:  # a new branch starts from the U-Net's encoder; a trained one is kept
        branch = branch_for(unet, **{**cfg["ref_branch"], **({} if ca_levels is None else {"ca_levels": ca_levels})})
    elif ca_levels is not None:
        branch = with_levels(branch, ca_levels)
    model = RefSRModel(vqvae, unet, branch, sched, kind, scale, cfg["patch_size"], cfg["ref_size"], cfg["max_refs"], latent)
    if init_from is not None:  # a fine-tuned model says what it started from (and how that was made)
        model.recipe = {"init_from": str(init_from), **({"base_recipe": dict(base.recipe)} if base.recipe else {})}
    return model


def diffusion_target(prediction_type: str, z0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to predict: ``eps`` or ``v = sqrt(a) eps - sqrt(1 - a) z0``
    (Salimans & Ho 2022, Sec. 4). ``alpha_bar`` broadcasts against ``z0`` (B, 1, 1, 1)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * z0
    raise ValueError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def predicted_z0(prediction_type: str, noisy: torch.Tensor, pred: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The model's estimate of ``z0`` from its prediction ``pred`` at ``noisy`` (the inverse of
    :func:`diffusion_target`): eps: ``(x_t - sqrt(1 - a) eps) / sqrt(a)`` (DDPM eq. 15); v:
    ``sqrt(a) x_t - sqrt(1 - a) v``. ``alpha_bar`` broadcasts against ``noisy`` (B, 1, 1, 1)."""
    if prediction_type == "epsilon":
        return (noisy - (1 - alpha_bar).sqrt() * pred) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * pred
    raise ValueError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def luma_difference(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma of ``images`` minus that of ``reference``, as ``refsr evaluate`` converts
    (:func:`refsr.metrics.fidelity.rgb_to_y`): (B, 3, H, W) RGB in [-1, 1] -> (B, 1, H, W) on the
    scale of the images (the 0-255 Y difference / 127.5); differentiable."""
    from ..metrics.fidelity import rgb_to_y

    return (rgb_to_y((images + 1) * 127.5) - rgb_to_y((reference + 1) * 127.5)) / 127.5


def min_snr_weight(prediction_type: str, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 8), shape of ``alpha_bar``; ones
    for ``gamma <= 0``. SNR_t = a_t / (1 - a_t); eps: min(SNR, g) / SNR; v: min(SNR, g) / (SNR + 1)."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def lr_start_noise(z0: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The noise that makes ``noisy`` a noised ``z0`` at ``alpha_bar``: ``(noisy - sqrt(a) z0) /
    sqrt(1 - a)`` (DDPM eq. 4 solved for eps), the target noise of a sample noised from another
    latent (the LR's). ``alpha_bar`` broadcasts against ``z0`` (B, 1, 1, 1)."""
    return (noisy - alpha_bar.sqrt() * z0) / (1 - alpha_bar).sqrt()


def max_timestep(max_strength: float, num_train_timesteps: int) -> int:
    """The number of training timesteps drawn from, ``[0, result)``: ``max_strength x T``
    rounded, at least 1. Sampling with ``--start-strength S`` begins at the timestep DDIM
    places near ``S x T`` (``samplers.start_timesteps``), so S <= max_strength stays inside."""
    if not 0.0 < max_strength <= 1.0:
        raise ValueError(f"max strength must be in (0, 1], got {max_strength}")
    return max(1, min(num_train_timesteps, round(max_strength * num_train_timesteps)))


class DiffusionModule(nn.Module):
    """A RefSRModel with its frozen VQ and the denoising loss: ``forward(batch, generator)``.

    Batch: ``hr`` (B, 3, P, P), ``lr`` (B, 3, P/s, P/s) in [-1, 1] (or ``degrade_key``
    when LR is degraded on the fly), ``refs`` (B, N, 3, S, S), ``ref_mask`` (B, N) bool.
    ``min_snr_gamma`` > 0 weights the loss per timestep (min-SNR-gamma); ``max_strength`` < 1
    draws timesteps below ``max_strength x T`` only (for models sampled with
    ``--start-strength <= max_strength``); ``lr_start_fraction`` of the samples are noised from
    the upsampled LR's latent, at timesteps in the upper half of that range (module docstring).
    """

    def __init__(self, model: RefSRModel, degrade=None, min_snr_gamma: float = 0.0, max_strength: float = 1.0,
                 lr_start_fraction: float = 0.0, pixel_loss_weight: float = 0.0):
        super().__init__()
        from diffusers import DDPMScheduler

        if not 0.0 <= lr_start_fraction <= 1.0:
            raise ValueError(f"lr start fraction must be in [0, 1], got {lr_start_fraction}")
        if pixel_loss_weight < 0:
            raise ValueError(f"pixel loss weight must be >= 0, got {pixel_loss_weight}")
        self.model, self.min_snr_gamma, self.lr_start_fraction = model, float(min_snr_gamma), float(lr_start_fraction)
        self.pixel_loss_weight = float(pixel_loss_weight)
        model.vqvae.requires_grad_(False).eval()
        sched = DDPMScheduler(**_scheduler_kwargs(model.scheduler_config))
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.float().clone(), persistent=False)
        self.max_timestep = max_timestep(max_strength, sched.config.num_train_timesteps)
        self.degrade = degrade

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.vqvae.eval()
        return self

    def forward(self, batch: dict, generator=None):
        hr, lr = batch["hr"], batch.get("lr")
        if lr is None:
            hr, lr = self.degrade(hr, batch["degrade_key"])
        with torch.no_grad():
            z0 = self.model.encode(hr)
        b = z0.shape[0]
        t = torch.randint(0, self.max_timestep, (b,), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        start, z_lr = z0, None
        if self.lr_start_fraction > 0:  # (drawn only then: runs without it keep their random stream)
            from_lr = torch.rand(b, generator=generator, device=z0.device) < self.lr_start_fraction
            upper = torch.randint(self.max_timestep // 2, self.max_timestep, (b,), generator=generator, device=z0.device)
            t = torch.where(from_lr, upper, t)
            with torch.no_grad():
                z_lr = self.model.encode(upsample_lr(lr, self.model.scale))
            start = torch.where(from_lr.view(b, 1, 1, 1), z_lr, z0)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1).to(z0.dtype)
        noisy = a.sqrt() * start + (1 - a).sqrt() * noise
        if z_lr is not None:
            noise = lr_start_noise(z0, noisy, a)
        lr_ctx, ref_ctx = self.contexts(lr, batch.get("refs"), batch.get("ref_mask"), z_lr)
        pred = self.model(noisy, t, lr, lr_ctx, ref_ctx)
        kind = self.model.prediction_type
        target = diffusion_target(kind, z0.float(), noise.float(), a.float())
        per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        loss = (min_snr_weight(kind, a.float().view(b), self.min_snr_gamma) * per_sample).mean()
        logs = {"refs_per_image": batch["ref_mask"].float().sum(1).mean() if "ref_mask" in batch else loss * 0}
        if self.pixel_loss_weight > 0:  # the estimate of z0 decoded (frozen decoder, unclamped) against the HR
            decoded = self.model.decode(predicted_z0(kind, noisy.float(), pred.float(), a.float()), clamp=False)
            pixel = luma_difference(decoded.float(), hr.float()).pow(2).mean()
            logs["luma_mse"] = pixel.detach()
            loss = loss + self.pixel_loss_weight * pixel
        return loss, logs

    def contexts(self, lr, refs, mask, lr_latents=None):
        """E_LR and E_Ref contexts for ``ldm-ca`` when some image has references, else None.
        ``lr_latents``: the upsampled LR's VQ latents, if already computed (not encoded again)."""
        if self.model.ref_branch is None or refs is None or mask is None or not bool(mask.any()):
            return None, None
        lr_up = upsample_lr(lr, self.model.scale)
        lr_ctx = self.model.encode_lr(inputs=self.model.branch_input(lr_up, latents=lr_latents))
        return lr_ctx, self.model.encode_references(refs, mask)


class OnTheFlyDegrade:
    """LR from HR with ``refsr.degrade``'s torch executor: parameters drawn per sample from
    ``(seed, degrade_key)`` with a preset (``realesrgan`` by default)."""

    def __init__(self, scale: int, seed: int, preset: str = "realesrgan"):
        from ..degrade import resolve_config

        self.scale, self.seed, self.config = scale, seed, resolve_config(preset)

    def __call__(self, hr: torch.Tensor, keys) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, P, P) HR in [-1, 1] -> (HR target, LR (B, 3, P/s, P/s)), both in [-1, 1]."""
        from ..degrade import degrade_batch, sample_params

        params = [sample_params(self.seed, str(k), self.config) for k in keys]
        lr, target = degrade_batch((hr + 1) / 2, params, self.scale, return_hr=True)
        return target.clamp(0, 1) * 2 - 1, lr.clamp(0, 1) * 2 - 1


class DiffusionStage(Stage):
    """Train ``ldm`` or ``ldm-ca`` on a pair manifest (+ matches), with a frozen VQ."""

    name = "diffusion"

    def __init__(self, data, config="small", kind="ldm-ca", vqvae=None, matches=None, init_from=None,
                 seed: int = 0, max_refs: int | None = None, ref_dropout: float | None = None,
                 degrade_on_the_fly: bool = False, validation_steps: int = 20,
                 prediction_type: str | None = None, min_snr_gamma: float | None = None,
                 max_strength: float = 1.0, lr_start_fraction: float = 0.0, freeze_unet: bool = False,
                 ca_levels=None, self_ref_fraction: float = 0.0, pixel_loss_weight: float = 0.0):
        cfg = load_config(config)
        if freeze_unet and (kind != "ldm-ca" or init_from is None):
            raise OptionError("freeze_unet", "trains only the reference branch: it needs kind ldm-ca and a trained "
                              "U-Net to start from (--init-from)")
        if ca_levels is not None and kind != "ldm-ca":
            raise OptionError("ca_levels", "cross-attention positions belong to the reference branch: they need kind ldm-ca")
        if self_ref_fraction > 0 and kind != "ldm-ca":
            raise OptionError("self_ref_fraction", "self references feed the reference branch: they need kind ldm-ca")
        self.seed, self.validation_steps = seed, validation_steps
        self.min_snr_gamma = cfg["train"]["min_snr_gamma"] if min_snr_gamma is None else float(min_snr_gamma)
        torch.manual_seed(seed)
        self.model = build_model(cfg, kind, vqvae, init_from, prediction_type, ca_levels)
        self.model.recipe = {**self.model.recipe, "min_snr_gamma": self.min_snr_gamma}
        self.max_strength = float(max_strength)
        if self.max_strength < 1.0:  # sampling must not start above it (refsr.sample.start_strength_for)
            self.model.recipe.update(max_strength=self.max_strength, recommended_start_strength=self.max_strength)
        self.lr_start_fraction = float(lr_start_fraction)
        if self.lr_start_fraction > 0:
            self.model.recipe["lr_start_fraction"] = self.lr_start_fraction
        if self_ref_fraction > 0:
            self.model.recipe["self_ref_fraction"] = float(self_ref_fraction)
        self.pixel_loss_weight = float(pixel_loss_weight)
        if self.pixel_loss_weight > 0:
            self.model.recipe["pixel_loss_weight"] = self.pixel_loss_weight
        self.freeze_unet = bool(freeze_unet)
        if self.freeze_unet:  # the loop optimises what requires grad: the branch only
            self.model.unet.requires_grad_(False)
            self.model.recipe["frozen_unet"] = True
        n_refs = cfg["max_refs"] if max_refs is None else max_refs
        if ref_dropout is None:  # frozen U-Net: a sample without references would train nothing
            ref_dropout = 0.0 if freeze_unet else cfg["train"]["ref_dropout"]
        if kind == "ldm-ca" and matches is None:
            log.warning("kind ldm-ca without --matches: the reference branch will see no references")
        self.data = PairDataset(data, self.model.patch_size, self.model.scale, matches if kind == "ldm-ca" else None,
                                self.model.ref_size, n_refs if kind == "ldm-ca" else 0, ref_dropout, seed,
                                lr_from_hr=degrade_on_the_fly, self_ref_fraction=self_ref_fraction)
        self.degrade = OnTheFlyDegrade(self.model.scale, seed) if degrade_on_the_fly else None
        self.find_unused_parameters = kind == "ldm-ca"

    def dataset(self):
        return self.data

    def module(self):
        return DiffusionModule(self.model, self.degrade, self.min_snr_gamma, self.max_strength, self.lr_start_fraction,
                               self.pixel_loss_weight)

    def validate(self, module, batch, path: Path) -> None:
        """LR (upsampled) | DDIM sample | HR for the validation batch."""
        hr, lr = batch["hr"], batch.get("lr")
        if lr is None:
            hr, lr = module.degrade(hr, batch["degrade_key"])
        lr_ctx, ref_ctx = module.contexts(lr, batch.get("refs"), batch.get("ref_mask"))
        sample = ddim_sample(module.model, lr, lr_ctx, ref_ctx, self.validation_steps, self.seed,
                             start_strength_for(module.model))
        save_grid([upsample_lr(lr, size=hr.shape[-2:]), sample, hr], path)

    def export(self, module, folder: Path) -> None:
        module.model.save_pretrained(folder)


@torch.no_grad()
def ddim_sample(model: RefSRModel, lr, lr_ctx, ref_ctx, steps: int, seed: int, strength: float = 1.0) -> torch.Tensor:
    """A DDIM sample (eta 0) for validation images, with ``refsr sample``'s denoising loop,
    from ``strength`` (see ``refsr sample --start-strength``): (B, 3, 4h, 4w) in [-1, 1]."""
    from ..sample.samplers import denoise, make_scheduler
    from ..seeding import torch_generator_for

    c = model.vqvae.config.latent_channels
    gen = torch_generator_for(seed, "validation", device=lr.device)
    z = torch.randn((lr.shape[0], c, *lr.shape[-2:]), generator=gen, device=lr.device, dtype=lr.dtype)
    predict = lambda x, t: model(x, t.expand(lr.shape[0]), lr, lr_ctx, ref_ctx)  # noqa: E731
    init = model.encode(upsample_lr(lr, model.scale)) if strength < 1.0 else None
    z = denoise(predict, z, make_scheduler("ddim", model.scheduler_config), steps, disable=True,
                init_latents=init, strength=strength)
    return model.decode(z)
