"""Model warmup, as TF Serving's saved_model_warmup.cc: with --enable_model_warmup, the
requests in `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog)
run once each against the freshly loaded version before it is AVAILABLE, so the first real
requests do not pay for lazy initialisation. A record that fails fails the load.
"""
import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from flowers.core import storage
from flowers.serving import inference

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving's kMaxNumRecords


def _run(servable, kind, request):
    if kind == "predict_log":
        signature = servable.signature(request.model_spec.signature_name)
        signature({name: tf.make_ndarray(proto) for name, proto in request.inputs.items()})
        return
    if kind in ("classify_log", "regress_log"):
        tasks = [request.model_spec.signature_name]
    elif kind == "multi_inference_log":
        tasks = [task.model_spec.signature_name for task in request.tasks]
    else:
        raise ValueError(f"Unsupported log_type for warmup: {kind}")
    examples = inference.serialized_examples(request.input)
    for name in tasks:
        signature = servable.signature(name)
        signature({next(iter(signature.inputs)): examples})


def replay(servable):
    """Run the version's warmup requests (blocking); returns how many ran (0: no file)."""
    path = storage.join(servable.path, WARMUP_FILE)
    if not storage.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = log.WhichOneof("log_type")
        _run(servable, kind, getattr(log, kind).request if kind else None)
    return count


def write(path, logs):
    """Write PredictionLogs as <SavedModel path>/assets.extra/tf_serving_warmup_requests."""
    target = storage.join(path, WARMUP_FILE)
    storage.makedirs(storage.dirname(target))
    with tf.io.TFRecordWriter(target) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return target
