"""The one place that names the step images (build them from containers/<step>/).

Set FLOWERS_IMAGE_REPO (e.g. us-central1-docker.pkg.dev/my-project/flowers) and FLOWERS_IMAGE_TAG
before compiling the pipeline or launching Dataflow to point them at your registry.
"""
import os

from flowers import __version__

STEPS = ("preprocess", "train", "serve")
DEFAULT_REPO = "us-central1-docker.pkg.dev/PROJECT/flowers"


def image(step, gpu=False, project=None, region=None):
    """REPO/STEP:TAG[-gpu]; without FLOWERS_IMAGE_REPO the repo is REGION-docker.pkg.dev/PROJECT/flowers
    when a project and region are given (a Dataflow job's), else DEFAULT_REPO."""
    if step not in STEPS:
        raise ValueError(f"unknown step image {step!r}")
    repo = os.environ.get("FLOWERS_IMAGE_REPO") or (
        f"{region}-docker.pkg.dev/{project}/flowers" if project and region else DEFAULT_REPO)
    tag = os.environ.get("FLOWERS_IMAGE_TAG", __version__)
    return f"{repo.rstrip('/')}/{step}:{tag}{'-gpu' if gpu else ''}"
