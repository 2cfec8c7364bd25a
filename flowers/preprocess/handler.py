"""A Beam RunInference ModelHandler for our backbones: decoded images in, embeddings out.

Beam's own TFModelHandlerTensor imports tensorflow_hub and loads through
tf.keras; our backbones are built by `flowers.backbones.load`, so this small
handler loads them instead. RunInference shares the loaded model between all
threads of a worker process, so each worker builds the backbone once.

Loading takes seconds (weights, Keras graph, tracing), so it runs on a background
thread: `preload` starts it when the pipeline starts (a runner in this process),
and load_model returns at once with a model that waits for it on its first batch.
Beam plans and runs the CSV stage, and the first images decode, meanwhile.
"""
import concurrent.futures
import logging
import threading

import tensorflow as tf
from apache_beam.ml.inference import base

_LOGGER = logging.getLogger(__name__)
_loads = {}  # backbone name -> Future of a model, started by preload() in this process
_loads_lock = threading.Lock()


def _load(backbone_name):
    from flowers.core import backbones  # Keras: imported on the loading thread

    model = backbones.load(backbone_name)
    size = backbones.get(backbone_name).image_size
    # One traced graph for any batch size: cheaper per call than model.predict (no data
    # adapter per batch) and safe to call from several worker threads at once.
    embed = tf.function(lambda x: model(x, training=False), input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32)])
    embed(tf.zeros([1, size, size, 3]))  # trace and optimise the graph now, not on the first batch
    _LOGGER.info("loaded backbone %s", backbone_name)
    return embed


def preload(backbone_name):
    """Start loading the backbone on a background thread (once per process); returns its Future."""
    with _loads_lock:
        if backbone_name not in _loads:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load-model")
            _loads[backbone_name] = pool.submit(_load, backbone_name)
            pool.shutdown(wait=False)  # the thread ends when the load is done
        return _loads[backbone_name]


class _Loading:
    """The model being loaded: a call waits for it."""

    def __init__(self, future):
        self._future = future

    def __call__(self, x):
        return self._future.result()(x)


class BackboneModelHandler(base.ModelHandler):
    """Examples are float32 [S, S, 3] tensors from `flowers.core.images.load_image_tensor`;
    predictions are PredictionResult(example, float32 [embedding_size])."""

    def __init__(self, backbone_name, min_batch_size=32, max_batch_size=32):
        # min == max keeps BatchElements from resizing batches by timing, which
        # on a busy machine only makes them smaller.
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._backbone_name = backbone_name

    def load_model(self):
        return _Loading(preload(self._backbone_name))

    def run_inference(self, batch, model, inference_args=None):
        embeddings = model(tf.stack(batch)).numpy()
        return [base.PredictionResult(x, e) for x, e in zip(batch, embeddings)]

    def get_num_bytes(self, batch):
        return sum(x.dtype.size * x.shape.num_elements() for x in batch)  # the default pickles the whole batch

    def get_metrics_namespace(self):
        return "flowers_backbone"
