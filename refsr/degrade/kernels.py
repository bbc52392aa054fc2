"""Blur kernels of Real-ESRGAN (Wang et al., ICCV-W 2021, Sec. 3.1), as in BasicSR's
``basicsr/data/degradations.py``: isotropic/anisotropic Gaussian, generalized Gaussian,
plateau, and the circular low-pass (2-D sinc) filter.

Every function returns a (k, k) float32 kernel that sums to 1, with odd ``k``.
"""

from __future__ import annotations

import numpy as np

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def mesh_grid(kernel_size: int) -> np.ndarray:
    """(k, k, 2) float64 grid of (x, y) offsets from the kernel centre."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    ax = np.arange(-(kernel_size // 2), kernel_size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=2)


def sigma_matrix2(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Covariance R diag(sx^2, sy^2) R^T of a Gaussian rotated by ``theta`` radians."""
    d = np.diag([sig_x**2, sig_y**2])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return u @ d @ u.T


def _mahalanobis(kernel_size: int, sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """(k, k) squared Mahalanobis distance x^T Sigma^-1 x of every kernel tap."""
    grid = mesh_grid(kernel_size)
    inv = np.linalg.inv(sigma_matrix2(sig_x, sig_y, theta))
    return np.sum((grid @ inv) * grid, axis=2)


def _normalise(kernel: np.ndarray) -> np.ndarray:
    return (kernel / np.sum(kernel)).astype(np.float32)


def bivariate_gaussian(kernel_size: int, sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Anisotropic Gaussian exp(-x^T Sigma^-1 x / 2), normalised (iso: sig_y = sig_x, theta = 0)."""
    return _normalise(np.exp(-0.5 * _mahalanobis(kernel_size, sig_x, sig_y, theta)))


def bivariate_generalized_gaussian(kernel_size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> np.ndarray:
    """Generalized Gaussian exp(-(x^T Sigma^-1 x)^beta / 2) (Real-ESRGAN eq. 2), normalised."""
    return _normalise(np.exp(-0.5 * np.power(_mahalanobis(kernel_size, sig_x, sig_y, theta), beta)))


def bivariate_plateau(kernel_size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> np.ndarray:
    """Plateau-shaped kernel 1 / (1 + (x^T Sigma^-1 x)^beta), normalised."""
    return _normalise(1.0 / (np.power(_mahalanobis(kernel_size, sig_x, sig_y, theta), beta) + 1.0))


def circular_lowpass_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """2-D circularly symmetric low-pass (sinc) filter, Real-ESRGAN eq. 3.

    k(i, j) = omega_c / (2 pi r) * J1(omega_c r), r = sqrt(i^2 + j^2), with the limit
    omega_c^2 / (4 pi) at r = 0; normalised to sum 1 and zero-padded to ``pad_to`` if larger.
    """
    from scipy import special

    grid = mesh_grid(kernel_size)
    r = np.sqrt(grid[..., 0] ** 2 + grid[..., 1] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    c = kernel_size // 2
    kernel[c, c] = cutoff**2 / (4 * np.pi)
    kernel = _normalise(kernel)
    if pad_to > kernel_size:
        p = (pad_to - kernel_size) // 2
        kernel = np.pad(kernel, ((p, p), (p, p)))
    return kernel


def make_kernel(spec: dict) -> np.ndarray:
    """Build the kernel described by a drawn blur record (see :mod:`refsr.degrade.params`).

    ``spec``: ``{"type": "sinc", "size", "cutoff"}`` or ``{"type": <KERNEL_TYPES>, "size",
    "sigma_x", "sigma_y", "theta", "beta"}`` (``beta`` unused for iso/aniso).
    """
    kind, size = spec["type"], int(spec["size"])
    if kind == "sinc":
        return circular_lowpass_kernel(spec["cutoff"], size)
    args = (size, spec["sigma_x"], spec["sigma_y"], spec["theta"])
    if kind in ("iso", "aniso"):
        return bivariate_gaussian(*args)
    if kind.startswith("generalized"):
        return bivariate_generalized_gaussian(*args, spec["beta"])
    if kind.startswith("plateau"):
        return bivariate_plateau(*args, spec["beta"])
    raise ValueError(f"unknown kernel type {kind!r}; expected one of {('sinc',) + KERNEL_TYPES}")
