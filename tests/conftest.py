import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = (ROOT.parent / "shared" / "datasets" / "flower_photos").resolve()
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


@pytest.fixture(scope="session")
def photos():
    """The shared flower photos (read-only): {class: [sorted paths]}."""
    if not PHOTOS.is_dir():
        pytest.fail(f"shared photos not found at {PHOTOS}")
    return {c: sorted(str(p) for p in (PHOTOS / c).glob("*.jpg")) for c in CLASSES}


@pytest.fixture(scope="session")
def photos_root():
    return str(PHOTOS)
