"""Presets and the one parameter sampler of the degradation stage.

:func:`sample_params` is a pure function of ``(seed, pair_id, config)``: it returns a
JSON-serialisable dict of every value drawn for one pair, which both executors
(:mod:`.numpy_exec`, :mod:`.torch_exec`) apply and ``manifest.jsonl`` records. Each stage
draws from its own stream ``rng_for(seed, pair_id, stage)``, so overriding a stage-2
setting does not change what stage 1 draws.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..seeding import rng_for

PRESET_DIR = "presets"
META_KEYS = ("name", "kind", "description")


def list_presets() -> list[str]:
    """Names of the preset JSON files shipped in ``refsr/degrade/presets/``."""
    files = resources.files(__package__).joinpath(PRESET_DIR).iterdir()
    return sorted(Path(f.name).stem for f in files if f.name.endswith(".json"))


def load_preset(name: str) -> dict:
    """The preset ``name`` as a dict (see ``presets/*.json``).

    Raises:
        ValueError: unknown name, listing the available presets.
    """
    if name not in list_presets():
        raise ValueError(f"unknown degradation preset {name!r}; available: {', '.join(list_presets())}")
    text = resources.files(__package__).joinpath(PRESET_DIR).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def resolve_config(preset: str = "realesrgan", overrides: dict | str | Path | None = None, usm: bool | None = None) -> dict:
    """A preset with ``overrides`` (a dict or a JSON file) applied, and ``usm`` if given.

    Raises:
        InputError: an override key the preset does not have (listing the valid keys), or
            a value of the wrong kind (list vs number).
    """
    config = load_preset(preset)
    if isinstance(overrides, (str, Path)):
        from ..io import read_json

        where, overrides = str(overrides), read_json(overrides)
    else:
        where = "config"
    if overrides:
        if not isinstance(overrides, dict):
            raise InputError(f"{where}: expected a JSON object of parameter overrides")
        for key, value in overrides.items():
            if key not in config or key in META_KEYS:
                valid = ", ".join(k for k in config if k not in META_KEYS)
                raise InputError(f"{where}: unknown parameter {key!r} for preset {preset!r}; valid: {valid}")
            if isinstance(config[key], list) != isinstance(value, list):
                raise InputError(f"{where}: parameter {key!r} must be {'a list' if isinstance(config[key], list) else 'a single value'}, got {value!r}")
            config[key] = value
    if usm is not None:
        config["usm"] = bool(usm)
    return config


# ---------------------------------------------------------------------------------------
# Draws
# ---------------------------------------------------------------------------------------


def _kernel_sizes(config: dict) -> list[int]:
    lo, hi = config["kernel_range"]
    return list(range(int(lo), int(hi) + 1, 2))


def _beta(rng: np.random.Generator, low: float, high: float) -> float:
    """BasicSR's beta draw: U(low, 1) or U(1, high), 50/50."""
    return float(rng.uniform(low, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, high))


def draw_blur(rng: np.random.Generator, config: dict, suffix: str = "") -> dict:
    """One blur kernel record (``RealESRGANDataset.__getitem__``): sinc with probability
    ``sinc_prob``, else one of ``kernel_list`` with ``kernel_prob``."""
    size = int(rng.choice(_kernel_sizes(config)))
    if rng.uniform() < config["sinc_prob" + suffix]:
        low = math.pi / 3 if size < 13 else math.pi / 5
        return {"type": "sinc", "size": size, "cutoff": float(rng.uniform(low, math.pi))}
    kinds, probs = config["kernel_list" + suffix], np.asarray(config["kernel_prob" + suffix], float)
    kind = str(kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))])
    sig_lo, sig_hi = config["blur_sigma" + suffix]
    sigma_x = float(rng.uniform(sig_lo, sig_hi))
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = float(rng.uniform(sig_lo, sig_hi)), float(rng.uniform(-math.pi, math.pi))
    beta = None
    if kind.startswith("generalized"):
        beta = _beta(rng, *config["betag_range" + suffix])
    elif kind.startswith("plateau"):
        beta = _beta(rng, *config["betap_range" + suffix])
    return {"type": kind, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta, "beta": beta}


def draw_resize(rng: np.random.Generator, config: dict, suffix: str = "") -> dict:
    """Resize record: direction up/down/keep with ``resize_prob``, factor in ``resize_range``, mode."""
    direction = ("up", "down", "keep")[int(rng.choice(3, p=np.asarray(config["resize_prob" + suffix], float)))]
    lo, hi = config["resize_range" + suffix]
    factor = float(rng.uniform(1.0, hi)) if direction == "up" else float(rng.uniform(lo, 1.0)) if direction == "down" else 1.0
    mode = str(config["resize_modes"][int(rng.integers(len(config["resize_modes"])))])
    return {"direction": direction, "factor": factor, "mode": mode}


def draw_noise(rng: np.random.Generator, config: dict, suffix: str = "") -> dict:
    """Noise record: Gaussian (sigma in 8-bit levels) with ``gaussian_noise_prob``, else
    Poisson with a ``scale``; gray with ``gray_noise_prob``; ``seed`` fixes the realisation."""
    if rng.uniform() < config["gaussian_noise_prob" + suffix]:
        record = {"kind": "gaussian", "sigma": float(rng.uniform(*config["noise_range" + suffix]))}
    else:
        record = {"kind": "poisson", "scale": float(rng.uniform(*config["poisson_scale_range" + suffix]))}
    record["gray"] = bool(rng.uniform() < config["gray_noise_prob" + suffix])
    record["seed"] = int(rng.integers(0, 2**63 - 1))
    return record


def draw_jpeg(rng: np.random.Generator, config: dict, suffix: str = "") -> dict:
    """JPEG record: quality = int(U(low, high)), as BasicSR's ``random_add_jpg_compression``."""
    lo, hi = config["jpeg_range" + suffix]
    return {"quality": int(rng.uniform(lo, hi))}


def draw_final(rng: np.random.Generator, config: dict) -> dict:
    """Final steps: order (50/50), resize mode, sinc (``final_sinc_prob``, cutoff U(pi/3, pi)), JPEG."""
    order = "resize_sinc_jpeg" if rng.uniform() < 0.5 else "jpeg_resize_sinc"
    mode = str(config["resize_modes"][int(rng.integers(len(config["resize_modes"])))])
    sinc = None
    if rng.uniform() < config["final_sinc_prob"]:
        size = int(rng.choice(_kernel_sizes(config)))
        sinc = {"type": "sinc", "size": size, "cutoff": float(rng.uniform(math.pi / 3, math.pi))}
    return {"order": order, "resize_mode": mode, "sinc": sinc, "jpeg": draw_jpeg(rng, config, "2")}


def _usm_record(config: dict) -> dict | None:
    if not config.get("usm"):
        return None
    return {"weight": config["usm_weight"], "radius": config["usm_radius"], "threshold": config["usm_threshold"]}


def sample_params(seed: int, pair_id: str, config: dict) -> dict[str, Any]:
    """Every random value of one pair's degradation, drawn from ``(seed, pair_id)`` only.

    Returns a JSON-serialisable dict: ``preset``, ``kind``, ``usm`` (null or its settings)
    and, for ``kind == "realesrgan"``, ``stage1`` {blur, resize, noise, jpeg}, ``stage2``
    {blur (null when skipped), resize, noise, jpeg} and ``final`` {order, resize_mode, sinc,
    jpeg}. Resize factors of stage 2 are relative to HR/scale, as in Real-ESRGAN.
    """
    params: dict[str, Any] = {"preset": config.get("name"), "kind": config["kind"], "usm": _usm_record(config)}
    if config["kind"] == "bicubic":
        params["resize"] = {"mode": "matlab_bicubic", "antialias": True}
        return params
    if config["kind"] != "realesrgan":
        raise ValueError(f"unknown degradation kind {config['kind']!r}; expected realesrgan or bicubic")
    r1, r2, rf = (rng_for(seed, pair_id, name) for name in ("stage1", "stage2", "final"))
    params["stage1"] = {"blur": draw_blur(r1, config), "resize": draw_resize(r1, config), "noise": draw_noise(r1, config), "jpeg": draw_jpeg(r1, config)}
    blur2 = draw_blur(r2, config, "2")
    params["stage2"] = {
        "blur": blur2 if r2.uniform() < config["second_blur_prob"] else None,
        "resize": draw_resize(r2, config, "2"),
        "noise": draw_noise(r2, config, "2"),
        "jpeg": draw_jpeg(r2, config, "2"),
    }
    params["final"] = draw_final(rf, config)
    return params


def sample_crop(seed: int, pair_id: str, width: int, height: int, crop: int) -> tuple[int, int]:
    """Top-left (x, y) of a ``crop`` x ``crop`` window, uniform over positions that fit in a
    ``width`` x ``height`` image (0 along an axis the crop does not fit: it is padded)."""
    rng = rng_for(seed, pair_id, "crop")
    x = int(rng.integers(0, max(width - crop, 0) + 1))
    y = int(rng.integers(0, max(height - crop, 0) + 1))
    return x, y
