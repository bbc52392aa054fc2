"""The ``degrade`` stage: Real-ESRGAN second-order degradations and plain bicubic, with
every drawn value recorded so each pair can be reproduced.

- :mod:`.kernels`: blur kernels (Gaussian family, plateau, sinc).
- :mod:`.ops`: pure numpy/OpenCV steps (filter, resize, noise, JPEG, unsharp mask).
- :mod:`.params`: presets and the one parameter sampler ``sample_params(seed, id, config)``.
- :mod:`.numpy_exec`: apply parameters to one image (the CLI path).
- :mod:`.torch_exec`: apply parameters to a batch on any device (``degrade_batch``).
- :mod:`.pipeline`: the stage over files (crops, ids, manifest, resume, workers, shards).
"""

from .numpy_exec import degrade_image
from .params import list_presets, load_preset, resolve_config, sample_crop, sample_params

__all__ = ["degrade_image", "list_presets", "load_preset", "resolve_config", "sample_crop", "sample_params", "degrade_folder", "merge_shards", "degrade_batch"]


def __getattr__(name):  # heavy or file-level parts, imported on first use
    if name in ("degrade_folder", "merge_shards"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "degrade_batch":
        from .torch_exec import degrade_batch

        return degrade_batch
    raise AttributeError(name)
