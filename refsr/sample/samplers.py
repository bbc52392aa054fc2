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


def start_timesteps(scheduler, steps: int, strength: float):
    """The sampler's timesteps when the reverse process starts at ``strength x T``.

    ``strength = 1`` keeps all ``steps`` timesteps; otherwise the last ``round(strength x
    steps)`` (at least one) are kept, as diffusers' img2img pipelines do (SDEdit, Meng et al.
    2022), and multistep schedulers are told where they begin. Call after ``set_timesteps``.

    Raises:
        ValueError: ``strength`` outside (0, 1].
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"start strength must be in (0, 1], got {strength}")
    if strength == 1.0:
        return scheduler.timesteps
    kept = min(max(round(strength * steps), 1), steps)
    begin = (steps - kept) * getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return scheduler.timesteps[begin:]


def sampling_timesteps(name: str, config: dict, steps: int, strength: float = 1.0) -> list[int]:
    """The training timesteps at which :func:`denoise` evaluates the model for sampler ``name``
    (built from ``config``) with ``steps`` and start ``strength``, first to last: e.g. DDIM, 20
    steps, strength 0.3 -> ``[250, 200, 150, 100, 50, 0]``; 4 steps, 0.5 -> ``[250, 0]`` (one
    jump from t = 250). ``refsr sample`` records them in run.json."""
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(int(steps))
    return [int(t) for t in start_timesteps(scheduler, int(steps), float(strength))]


def denoise(
    eps_fn: Callable,
    latents,
    scheduler,
    steps: int,
    eta: float = 0.0,
    generator=None,
    callback: Callable | None = None,
    disable: bool | None = None,
    init_latents=None,
    strength: float = 1.0,
):
    """Run the reverse diffusion from ``latents`` to a clean latent.

    With ``strength = 1`` it starts from pure noise; with ``strength < 1`` it starts at
    timestep ``t_s`` (about ``strength x T``) from ``init_latents`` noised to that level,
    ``sqrt(a_s) z_init + sqrt(1 - a_s) latents`` (DDPM eq. 4), e.g. the latent of the
    bicubic-upsampled LR image.

    Args:
        eps_fn (`callable`): ``eps_fn(x, t) -> out``, x (B, C, h, w) float32, t a 0-dim long
            tensor (the training timestep), out the model's prediction of the kind the
            scheduler's ``prediction_type`` names (``epsilon`` or ``v_prediction``), same shape as x.
        latents (`torch.Tensor`): (B, C, h, w) float32 standard normal noise.
        init_latents (`torch.Tensor`, *optional*): (B, C, h, w), needed when ``strength < 1``.
        strength (`float`, defaults to 1): in (0, 1], see above.
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
    if strength < 1.0 and init_latents is None:
        raise ValueError("a start strength below 1 needs init_latents")
    # 1. timesteps of the chosen sampler (DDIM Eq. 12 uses a sub-sequence of 1..T), from t_s
    scheduler.set_timesteps(int(steps), device=latents.device)
    timesteps = start_timesteps(scheduler, int(steps), float(strength))
    if strength < 1.0:
        x = scheduler.add_noise(init_latents.to(latents.dtype), latents, timesteps[:1])
    else:
        x = latents * scheduler.init_noise_sigma
    kwargs = _step_kwargs(scheduler, eta, generator)
    bar_kwargs = {"desc": "steps", "leave": False, "total": len(timesteps)}
    if disable is not None:
        bar_kwargs["disable"] = disable
    with torch.no_grad():
        for i, t in enumerate(progress(timesteps, **bar_kwargs)):
            # 2. predict eps_theta(x_t, t, LR, refs) (or v_theta for v-prediction)
            eps = eps_fn(scheduler.scale_model_input(x, t), t)
            # 3. x_{t-1} from the sampler's update rule (DDIM Eq. 12, DDPM Eq. 11, DPM-Solver++ Alg. 2)
            x = scheduler.step(eps.to(x.dtype), t, x, **kwargs).prev_sample
            if callback is not None:
                callback({"i": i, "t": t, "x": x})
    return x
