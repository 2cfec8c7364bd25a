"""A Beam RunInference ModelHandler for our backbones: decoded images in, embeddings out.

Beam's own TFModelHandlerTensor imports tensorflow_hub and loads through
tf.keras; our backbones are built by `flowers.backbones.load`, so this small
handler loads them instead. RunInference shares the loaded model between all
threads of a worker process, so each worker builds the backbone once.
"""
import logging

import numpy as np
from apache_beam.ml.inference import base

_LOGGER = logging.getLogger(__name__)


class BackboneModelHandler(base.ModelHandler):
    """Examples are float32 [S, S, 3] arrays from `flowers.images.load_image`;
    predictions are PredictionResult(example, float32 [embedding_size])."""

    def __init__(self, backbone_name, min_batch_size=32, max_batch_size=32):
        # min == max keeps BatchElements from resizing batches by timing, which
        # on a busy machine only makes them smaller.
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._backbone_name = backbone_name

    def load_model(self):
        import tensorflow as tf

        from flowers.core import backbones

        model = backbones.load(self._backbone_name)
        size = backbones.get(self._backbone_name).image_size
        # One traced graph for any batch size: cheaper per call than
        # model.predict (no data adapter per batch) and safe to call from
        # several worker threads at once.
        embed = tf.function(lambda x: model(x, training=False), input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32)])
        _LOGGER.info("loaded backbone %s", self._backbone_name)
        return embed

    def run_inference(self, batch, model, inference_args=None):
        embeddings = model(np.stack(batch)).numpy()
        return [base.PredictionResult(x, e) for x, e in zip(batch, embeddings)]

    def get_num_bytes(self, batch):
        return sum(x.nbytes for x in batch)  # the default pickles the whole batch

    def get_metrics_namespace(self):
        return "flowers_backbone"
