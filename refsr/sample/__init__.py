"""Sampling: restore LR images with a ``RefSRModel`` (``refsr sample``).

Public API: :func:`sample_files` (the stage over files), :func:`restore_tensor` (one image
tensor), :class:`SampleSettings`, :func:`recommended_settings` / :func:`start_strength_for`, :func:`make_scheduler` / :func:`denoise` (samplers),
:func:`apply_color_fix`, :func:`load_model` / :func:`default_model_path`.
Modules import torch/diffusers lazily, inside functions.
"""

from .color_fix import COLOR_FIXES, apply_color_fix
from .core import PRECISIONS, SampleSettings, recommended_settings, restore_tensor, start_strength_for
from .loading import default_model_path, load_model, resolve_model_path
from .restore import SampleSummary, sample_files
from .samplers import SAMPLERS, denoise, list_samplers, make_scheduler

__all__ = [
    "COLOR_FIXES",
    "PRECISIONS",
    "SAMPLERS",
    "SampleSettings",
    "SampleSummary",
    "apply_color_fix",
    "default_model_path",
    "denoise",
    "list_samplers",
    "load_model",
    "make_scheduler",
    "recommended_settings",
    "resolve_model_path",
    "restore_tensor",
    "sample_files",
    "start_strength_for",
]
