"""Shared fixtures: tiny real photos from scikit-image, written into tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("REFSR_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from refsr.demo import skimage_photo  # noqa: E402  (re-exported for the tests)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _torch_threads():
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:
        pass


_torch_threads()


def small_photo(name: str, size=(128, 96)) -> np.ndarray:
    """A scikit-image photo resized (INTER_AREA) to ``size`` (width, height)."""
    import cv2

    return cv2.resize(skimage_photo(name), size, interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny models run faster so on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage_photo("astronaut")


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    return skimage_photo("coffee")


@pytest.fixture(scope="session")
def motorcycle_pair() -> tuple[np.ndarray, np.ndarray]:
    """The left and right views of scikit-image's stereo motorcycle (real references)."""
    return skimage_photo("motorcycle_left"), skimage_photo("motorcycle_right")


@pytest.fixture
def photo_folder(tmp_path, astronaut, coffee) -> Path:
    """A folder with two small real photos as PNG (64x64 and 96x80)."""
    import cv2

    from refsr.io import write_image

    folder = tmp_path / "photos"
    write_image(folder / "astronaut.png", cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA))
    write_image(folder / "coffee.png", cv2.resize(coffee, (96, 80), interpolation=cv2.INTER_AREA))
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real photos for development live outside the project)")
    return SHARED_DATA
