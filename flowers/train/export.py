"""The servable model: raw image bytes in, class scores out, in TF Serving's layout.

`serving_default(key: string[N], image_bytes: string[N])` returns `key`,
`prediction` (int64 class id), `label` (string) and `scores` (float [N, classes]).
The backbone and the shared image function are inside, so clients send only bytes.
"""
import keras
import tensorflow as tf

from flowers.core import backbones, base_path as layout, images, storage


def serving_fn(backbone_model, head, labels, image_size):
    """The signature function; also usable in process (tests, benchmarks)."""
    label_table = tf.constant(labels)

    def serve(key, image_bytes):
        pixels = images.decode_batch(image_bytes, image_size)
        scores = head(backbone_model(pixels, training=False), training=False)
        prediction = tf.argmax(scores, axis=1)
        return {"key": key, "prediction": prediction, "label": tf.gather(label_table, prediction),
                "scores": scores}

    return serve


def export(head, backbone_name, labels, base_path, version=None, backbone_model=None):
    """Write base_path/<version>/ (next free version by default); returns its path."""
    spec = backbones.get(backbone_name)
    backbone_model = backbone_model or backbones.load(backbone_name)
    version = version or layout.next_version(base_path)
    path = storage.join(base_path, str(version))
    archive = keras.export.ExportArchive()
    archive.track(backbone_model)
    archive.track(head)
    archive.add_endpoint(
        "serving_default",
        serving_fn(backbone_model, head, list(labels), spec.image_size),
        input_signature=[tf.TensorSpec([None], tf.string, name="key"),
                         tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.write_out(path, verbose=False)
    return path
