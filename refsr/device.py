"""Choosing the compute device from a ``--device`` string."""

from __future__ import annotations

import os
import re

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask (``os.sched_getaffinity``, which a
    SLURM job or a cgroup CPU set restricts; ``os.cpu_count()`` where the platform has no
    affinity), divided among the ``LOCAL_WORLD_SIZE`` processes a launcher started on this
    node. At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cpus // max(1, local))


def resolve_device(spec: str = "auto"):
    """Turn ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` into a ``torch.device``.

    ``auto`` picks CUDA when available (``cuda:LOCAL_RANK`` under a multi-process launcher,
    so each process gets its own GPU), else CPU.

    Raises:
        ValueError: for an unknown spec, or CUDA asked for where none is available.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if not DEVICE_PATTERN.match(spec):
        raise ValueError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # one process per GPU under `accelerate launch` / `torchrun`: each takes its own
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return torch.device(f"cuda:{local % torch.cuda.device_count()}")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine; use --device cpu")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(spec)


def prefer_channels_last(model):
    """``model`` (for inference) with its 4-D weights channels-last (NHWC) when it is on the CPU,
    where oneDNN's convolutions then run channels-last throughout, with the same result up to
    float rounding: `refsr sample` takes about 0.9x the time of the default layout (0.87-0.92x:
    the shipped model, 32-128 px inputs, 0-10 references, one thread, max difference 1.2e-4;
    ``scripts/bench_channels_last.py``), the patch matcher of `refsr match` about 0.83x.
    Unchanged on other devices, where it is not measured yet. Used by ``refsr sample`` (and the
    demo) and ``refsr match``; not in training."""
    import torch

    if next(model.parameters()).device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def cpu_bf16_supported() -> bool | None:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX instructions); None
    where this torch cannot say. Without them bf16 is emulated: `refsr sample --precision bf16`
    took 7x the time of fp32 on the AVX2 dev VM (channels-last; 60x in the default layout)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None
