"""Seeds that make every random stage reproducible, independent of worker count or order.

A random stream is a pure function of ``(seed, *keys)``: e.g. ``rng_for(seed, pair_id)``
gives the same draws for a pair whatever process handles it and whenever it runs.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_hash(*keys: object) -> int:
    """64-bit integer hash of ``keys`` that is stable across processes and Python runs
    (unlike ``hash()``, which is salted per process)."""
    text = "\x1f".join(str(k) for k in keys).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator determined by ``seed`` and ``keys`` only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stable_hash(*keys)]))


def torch_generator_for(seed: int, *keys: object, device="cpu"):
    """A ``torch.Generator`` on ``device`` determined by ``seed`` and ``keys`` only."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + stable_hash(*keys)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g
