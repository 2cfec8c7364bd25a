"""The one place that names the step images (build them from containers/<step>/).

Set FLOWERS_IMAGE_REPO (e.g. us-central1-docker.pkg.dev/my-project/flowers) and FLOWERS_IMAGE_TAG
before compiling the pipeline to point it at your registry.
"""
import os

from flowers import __version__

STEPS = ("preprocess", "train", "serve")
DEFAULT_REPO = "us-central1-docker.pkg.dev/PROJECT/flowers"


def image(step, gpu=False):
    if step not in STEPS:
        raise ValueError(f"unknown step image {step!r}")
    repo = os.environ.get("FLOWERS_IMAGE_REPO", DEFAULT_REPO).rstrip("/")
    tag = os.environ.get("FLOWERS_IMAGE_TAG", __version__)
    return f"{repo}/{step}:{tag}{'-gpu' if gpu else ''}"
