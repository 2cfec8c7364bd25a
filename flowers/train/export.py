"""The servable model: raw image bytes in, class scores out, in TF Serving's layout.

`serving_default(key: string[N], image_bytes: string[N])` returns `key`,
`prediction` (int64 class id), `label` (string) and `scores` (float [N, classes]).
`classify(inputs: string[N])` takes serialized tf.Examples with an `image_bytes` bytes
feature and returns `classes` and `scores` [N, classes]: TF Serving's Classify API
(REST `:classify`) answers [label, score] pairs from it.
The backbone and the shared image function are inside, so clients send only bytes.
`assets.extra/tf_serving_warmup_requests` holds predict requests of every batch size the
serve image's batching config allows, and one classify request, for --enable_model_warmup.
"""
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

from flowers.core import backbones, base_path as layout, defaults, images, storage
from flowers.serving import inference, warmup

CLASSIFY_SIGNATURE, IMAGE_FEATURE = defaults.CLASSIFY_SIGNATURE, defaults.IMAGE_FEATURE
# Batch sizes warmed up at load: powers of two up to containers/serve/batching.config's max_batch_size
# (a test checks any allowed_batch_sizes there are among them).
WARMUP_BATCH_SIZES = (1, 2, 4, 8)
WARMUP_IMAGE_SIZE = (240, 320)  # a typical photo's height, width


def serving_fn(members, labels):
    """The signature function; also usable in process (tests, benchmarks).

    members: [(backbone_model, head, image_size)]. Several are an ensemble: the scores are their
    mean, each member fed THE image function's pixels at its own size."""
    label_table = tf.constant(labels)

    def serve(key, image_bytes):
        pixels = {size: images.decode_batch(image_bytes, size) for size in sorted({m[2] for m in members})}
        scores = [head(backbone_model(pixels[size], training=False), training=False)
                  for backbone_model, head, size in members]
        scores = scores[0] if len(scores) == 1 else tf.add_n(scores) / len(scores)
        prediction = tf.argmax(scores, axis=1)
        return {"key": key, "prediction": prediction, "label": tf.gather(label_table, prediction),
                "scores": scores}

    return serve


def classify_fn(serve, num_classes, labels):
    """The classify signature over serialized tf.Examples, reusing the predict function."""
    label_table = tf.constant(labels)

    def classify(inputs):
        features = tf.io.parse_example(inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        scores = serve(inputs, features[IMAGE_FEATURE])["scores"]
        classes = tf.tile(label_table[tf.newaxis], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": tf.reshape(scores, [-1, num_classes])}

    return classify


def export(head, backbone_name, labels, base_path, version=None, backbone_model=None):
    """Write base_path/<version>/ (next free version by default); returns its path."""
    return export_members([(backbone_name, backbone_model or backbones.load(backbone_name), head)],
                          labels, base_path, version)


def export_members(members, labels, base_path, version=None):
    """export() of [(backbone_name, backbone_model, head)]: one model, or an ensemble of several."""
    version = version or layout.next_version(base_path)
    path = storage.join(base_path, str(version))
    archive = keras.export.ExportArchive()
    for _, backbone_model, head in members:
        archive.track(backbone_model)
        archive.track(head)
    serve = serving_fn([(model, head, backbones.get(name).image_size) for name, model, head in members], list(labels))
    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[tf.TensorSpec([None], tf.string, name="key"),
                         tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.add_endpoint(CLASSIFY_SIGNATURE, classify_fn(serve, len(labels), list(labels)),
                         input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    archive.write_out(path, verbose=False)
    _set_method_name(path, CLASSIFY_SIGNATURE, inference.CLASSIFY)
    warmup.write(path, warmup_logs())
    return path


def _set_method_name(path, signature, method):
    """tf.saved_model writes every signature as `predict`; TF Serving's Classify checks the method."""
    pb_path = storage.join(path, "saved_model.pb")
    saved = saved_model_pb2.SavedModel.FromString(storage.read_bytes(pb_path))
    for meta_graph in saved.meta_graphs:
        meta_graph.signature_def[signature].method_name = method
    with storage.gfile.GFile(pb_path, "wb") as f:
        f.write(saved.SerializeToString())


def warmup_image():
    """A synthetic JPEG the size of a typical photo (decoding and resizing dominate the first calls)."""
    height, width = WARMUP_IMAGE_SIZE
    ramp = np.linspace(0, 255, height * width * 3, dtype=np.float32).reshape(height, width, 3)
    return tf.io.encode_jpeg(tf.constant(ramp.astype(np.uint8))).numpy()


def warmup_logs(batch_sizes=WARMUP_BATCH_SIZES):
    """PredictionLogs: one predict request per batch size, one classify request."""
    image = warmup_image()
    for size in batch_sizes:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = "serving_default"
        request.inputs["key"].CopyFrom(tf.make_tensor_proto([f"warmup-{i}".encode() for i in range(size)]))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image] * size))
        yield prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    request = classification_pb2.ClassificationRequest()
    request.model_spec.signature_name = CLASSIFY_SIGNATURE
    example = request.input.example_list.examples.add()
    example.features.feature[IMAGE_FEATURE].bytes_list.value.append(image)
    yield prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
