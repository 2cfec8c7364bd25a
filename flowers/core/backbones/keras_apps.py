"""Backbones from keras.applications. Their ImageNet weights are downloaded on
first use (then cached in ~/.keras/models) or read from --weights PATH."""
import keras

_APPS = {
    "inception_v3": keras.applications.InceptionV3,
    "mobilenet_v2": keras.applications.MobileNetV2,
}


def build(name, image_size, include_top=False, weights=None):
    try:
        app = _APPS[name](
            include_top=include_top,
            weights=weights or "imagenet",
            input_shape=(image_size, image_size, 3),
            pooling=None if include_top else "avg",
            classifier_activation=None,
        )
    except Exception as e:  # keras raises several kinds for a failed download
        raise RuntimeError(
            f"{name}: could not load ImageNet weights ({e.__class__.__name__}: {e}). "
            "Without internet access, download the Keras weights file elsewhere and pass "
            "--weights PATH, or place it in ~/.keras/models/."
        ) from e
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    return keras.Model(inputs, app(x), name=name)
