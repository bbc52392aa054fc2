"""Schedules and the shared denoising loop.

Schedulers come from diffusers, built from the model's own scheduler config (a
``DDPMScheduler`` config: 1000 training steps, LDM's ``scaled_linear`` betas, epsilon
prediction), so training and sampling agree on the noise schedule. The loop itself is one
function, :func:`denoise`, shared by every sampler: it only sees a noise-prediction
function ``eps_fn(x, t)``, so tiling and reference conditioning live outside it
(k-diffusion's split between samplers and model wrappers).
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable

log = logging.getLogger(__name__)

# name -> (diffusers class name, extra config overrides)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddpm": ("DDPMScheduler", {}),
}


def list_samplers() -> list[str]:
    """The sampler names ``make_scheduler`` accepts."""
    return list(SAMPLERS)


def make_scheduler(name: str, config: dict):
    """A diffusers scheduler of kind ``name`` built from a model's scheduler ``config``.

    Args:
        name (`str`): one of ``ddim`` (DDIM, Song et al. 2021), ``dpmpp`` (DPM-Solver++(2M),
            Lu et al. 2022) or ``ddpm`` (ancestral DDPM, Ho et al. 2020).
        config (`dict`): a diffusers scheduler config (``num_train_timesteps``, ``beta_*``,
            ``prediction_type`` ...); keys a scheduler does not know are ignored.

    Raises:
        ValueError: unknown ``name``, naming the allowed set.
    """
    import diffusers

    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    class_name, overrides = SAMPLERS[name]
    cls = getattr(diffusers, class_name)
    clean = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    accepted = set(inspect.signature(cls.__init__).parameters)
    clean = {k: v for k, v in clean.items() if k in accepted}
    clean.update({k: v for k, v in overrides.items() if k in accepted})
    return cls(**clean)


def _step_kwargs(scheduler, eta: float, generator) -> dict:
    """The keyword arguments ``scheduler.step`` accepts among ``eta`` and ``generator``."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = float(eta)
    if "generator" in params and generator is not None:
        kwargs["generator"] = generator
    return kwargs


def denoise(
    eps_fn: Callable,
    latents,
    scheduler,
    steps: int,
    eta: float = 0.0,
    generator=None,
    callback: Callable | None = None,
    disable: bool | None = None,
):
    """Run the reverse diffusion from pure noise ``latents`` to a clean latent.

    Args:
        eps_fn (`callable`): ``eps_fn(x, t) -> eps``, x (B, C, h, w) float32, t a 0-dim long
            tensor (the training timestep), eps the predicted noise, same shape as x.
        latents (`torch.Tensor`): (B, C, h, w) float32 standard normal noise x_T.
        scheduler: a diffusers scheduler (see :func:`make_scheduler`); its state is reset.
        steps (`int`): number of denoising steps (>= 1).
        eta (`float`, defaults to 0): DDIM's eta (0 = deterministic); other samplers ignore it.
        generator (`torch.Generator`, *optional*): for the noise stochastic samplers add
            (DDPM, DDIM with eta > 0); drawn for the whole canvas, so independent of tiling.
        callback (`callable`, *optional*): called after every step with a dict
            ``{"i", "t", "x"}`` (k-diffusion's hook).
        disable (`bool`, *optional*): silence the progress bar over steps.

    Returns:
        `torch.Tensor`: (B, C, h, w) float32, the denoised latent x_0.
    """
    import torch

    from ..progress import progress

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    # 1. timesteps of the chosen sampler (DDIM Eq. 12 uses a sub-sequence of 1..T)
    scheduler.set_timesteps(int(steps), device=latents.device)
    x = latents * scheduler.init_noise_sigma
    kwargs = _step_kwargs(scheduler, eta, generator)
    bar_kwargs = {"desc": "steps", "leave": False, "total": len(scheduler.timesteps)}
    if disable is not None:
        bar_kwargs["disable"] = disable
    with torch.no_grad():
        for i, t in enumerate(progress(scheduler.timesteps, **bar_kwargs)):
            # 2. predict the noise eps_theta(x_t, t, LR, refs)
            eps = eps_fn(scheduler.scale_model_input(x, t), t)
            # 3. x_{t-1} from the sampler's update rule (DDIM Eq. 12, DDPM Eq. 11, DPM-Solver++ Alg. 2)
            x = scheduler.step(eps.to(x.dtype), t, x, **kwargs).prev_sample
            if callback is not None:
                callback({"i": i, "t": t, "x": x})
    return x
