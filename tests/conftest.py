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


@pytest.fixture(scope="session")
def exported_model(photos, tmp_path_factory):
    """A real, small servable model: efficientnet_lite0 + a head fitted on 16 photos per class.

    Returns {"base_path", "version_path", "version", "labels", "backbone", "held_out"} where
    held_out maps each label to photos the head never saw.
    """
    import keras
    import numpy as np

    from flowers import backbones, export, images

    backbone_name, per_class = "efficientnet_lite0", 16
    labels = list(CLASSES)
    spec = backbones.get(backbone_name)
    model = backbones.load(backbone_name)
    paths = [(p, i) for i, c in enumerate(labels) for p in photos[c][:per_class]]
    x = np.stack([images.load_image(open(p, "rb").read(), spec.image_size) for p, _ in paths])
    y = np.array([i for _, i in paths])
    emb = model.predict(x, batch_size=32, verbose=0)
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((spec.embedding_size,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(len(labels), activation="softmax")])
    head.compile("adam", "sparse_categorical_crossentropy")
    head.fit(emb, y, epochs=30, batch_size=32, verbose=0)
    base = tmp_path_factory.mktemp("models") / "flowers"
    path = export.export(head, backbone_name, labels, str(base), backbone_model=model)
    return {"base_path": str(base), "version_path": path, "version": 1, "labels": labels,
            "backbone": backbone_name, "held_out": {c: photos[c][per_class:per_class + 4] for c in labels}}
