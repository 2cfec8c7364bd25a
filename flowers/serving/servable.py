"""One loaded version of a model (a SavedModel), its signatures and their TF Serving metadata."""
import dataclasses

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from flowers.core import storage
from flowers.serving.errors import invalid

DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass
class Signature:
    name: str
    fn: object  # the ConcreteFunction from tf.saved_model.load(path).signatures
    inputs: dict  # name -> tf.TensorSpec
    outputs: dict  # name -> tf.TensorSpec

    def __call__(self, inputs):
        """Blocking model call: {name: ndarray} -> {name: ndarray}."""
        result = self.fn(**{n: tf.constant(a, dtype=self.inputs[n].dtype) for n, a in inputs.items()})
        return {name: t.numpy() for name, t in result.items()}


class Servable:
    """One loaded version of a model."""

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.loaded = tf.saved_model.load(path)  # keep it: the signatures use its variables
        self.signatures = {
            key: Signature(key, fn, dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
            for key, fn in self.loaded.signatures.items()}
        self.signature_defs = _read_signature_defs(path)
        self.queues = {}  # batching queues, by signature and input shapes

    def signature(self, name):
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return self.signatures[key]


def _read_signature_defs(path):
    """SignatureDefMap as TF Serving's metadata reports it (every signature of the MetaGraph)."""
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(storage.read_bytes(storage.join(path, "saved_model.pb")))
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in saved.meta_graphs[0].signature_def.items():
        sig_map.signature_def[key].CopyFrom(sig)
    return sig_map
