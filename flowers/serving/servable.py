"""One loaded version of a model (a SavedModel), its signatures and their TF Serving metadata.

Loaded the way TF Serving loads every SavedModel, TF1 or TF2: the MetaGraph tagged `serve`
into a session (`tf.compat.v1.saved_model.loader`), then each SignatureDef run as a session
callable on its tensor names. So TF1 graphs (ParseExample, ref variables) load, and the
tensors are handed to TensorFlow as sent: TensorFlow, not this server, decides whether a
shape fits the graph (TF Serving does not check request shapes against the signature).
"""
import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.saved_model import loader_impl  # loader.load without its deprecation warning
from tensorflow_serving.apis import get_model_metadata_pb2

from flowers.serving.errors import invalid

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
INIT_OP_SIGNATURE = "__saved_model_init_op"  # a no-op "signature" TF2 writes


def _spec(info):
    shape = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None
                                                         for d in info.tensor_shape.dim]
    return tf.TensorSpec(shape, tf.dtypes.as_dtype(info.dtype), name=info.name)


@dataclasses.dataclass
class Signature:
    name: str
    method_name: str
    inputs: dict  # name -> tf.TensorSpec (its .name is the graph tensor)
    outputs: dict  # name -> tf.TensorSpec
    run: object  # session callable: arrays in input order -> arrays in output order

    def __call__(self, inputs):
        """Blocking model call: {name: ndarray} -> {name: ndarray}."""
        feeds = [inputs[n] if self.inputs[n].dtype == tf.string else
                 np.asarray(inputs[n], dtype=self.inputs[n].dtype.as_numpy_dtype) for n in sorted(self.inputs)]
        results = self.run(*feeds)
        return dict(zip(sorted(self.outputs), results))


class Servable:
    """One loaded version of a model."""

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = loader_impl.SavedModelLoader(path).load(self.session, [SERVE_TAG])
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        self.signatures = {}
        for key, sig in meta_graph.signature_def.items():
            self.signature_defs.signature_def[key].CopyFrom(sig)  # metadata lists all, as TF Serving's
            if key != INIT_OP_SIGNATURE:
                self.signatures[key] = self._signature(key, sig)
        self.queues = {}  # batching queues, by signature and input shapes

    def _signature(self, key, sig):
        inputs = {n: _spec(i) for n, i in sig.inputs.items()}
        outputs = {n: _spec(i) for n, i in sig.outputs.items()}
        options = config_pb2.CallableOptions(feed=[inputs[n].name for n in sorted(inputs)],
                                             fetch=[outputs[n].name for n in sorted(outputs)])
        # The C++ callable: no Python-side feed shape checks, as in TF Serving's Session::Run.
        run = self.session._make_callable_from_options(options)  # noqa: SLF001 - the public API checks shapes
        return Signature(key, sig.method_name, inputs, outputs, run)

    def signature(self, name):
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return self.signatures[key]

    def close(self):
        self.session.close()
