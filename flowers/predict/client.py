"""Prediction clients for TF Serving (or `flowers serve`), REST and gRPC, with one interface:

    client = RestClient("http://localhost:8501")      # or GrpcClient("localhost:8500")
    client.predict([jpeg_bytes], keys=["a.jpg"], model="flowers", label="stable")
    -> [{"key": "a.jpg", "prediction": 3, "label": "sunflowers", "scores": [...]}]
    client.classify([jpeg_bytes], model="flowers")   # TF Serving's Classify API, `classify` signature
    -> [[["daisy", 0.01], ["dandelion", 0.02], ...]]
    client.status("flowers"); client.metadata("flowers")

Both return plain Python values shaped like TF Serving's REST JSON, and raise
`ServingError` with the server's message.
"""
import base64
import json
import urllib.error
import urllib.parse
import urllib.request

from flowers.core import defaults

DEFAULT_MODEL = defaults.MODEL_NAME
MAX_MESSAGE_BYTES = 64 << 20


class ServingError(Exception):
    """A request the server refused: `status` is the HTTP status (REST) or gRPC code name."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def request_body(images, keys):
    """The lab's request.json: {"instances": [{"key": ..., "image_bytes": {"b64": ...}}]}."""
    return {"instances": [{"key": key, "image_bytes": {"b64": base64.b64encode(data).decode("ascii")}}
                          for key, data in zip(keys, images)]}


def _keys(images, keys):
    keys = [str(i) for i in range(len(images))] if keys is None else [str(k) for k in keys]
    if len(keys) != len(images):
        raise ValueError(f"{len(images)} images but {len(keys)} keys")
    return keys


class RestClient:
    def __init__(self, url, timeout_s=60.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def close(self):
        pass  # one connection per call; here for symmetry with GrpcClient

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _path(self, model, version=None, label=None):
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    def _call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text or e.reason
            raise ServingError(e.code, message) from None

    def predict(self, images, keys=None, model=DEFAULT_MODEL, version=None, label=None, signature_name=None):
        body = request_body(images, _keys(images, keys))
        if signature_name:
            body["signature_name"] = signature_name
        return self._call(self._path(model, version, label) + ":predict", body)["predictions"]

    def classify(self, images, model=DEFAULT_MODEL, version=None, label=None,
                 signature_name=defaults.CLASSIFY_SIGNATURE):
        """[label, score] pairs per image, from `:classify` with one tf.Example per image."""
        body = {"signature_name": signature_name, "examples": [
            {defaults.IMAGE_FEATURE: {"b64": base64.b64encode(data).decode("ascii")}} for data in images]}
        return self._call(self._path(model, version, label) + ":classify", body)["results"]

    def status(self, model=DEFAULT_MODEL, version=None, label=None):
        return self._call(self._path(model, version, label))

    def metadata(self, model=DEFAULT_MODEL, version=None, label=None):
        return self._call(self._path(model, version, label) + "/metadata")


class GrpcClient:
    def __init__(self, addr, timeout_s=60.0):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _spec(spec, model, version=None, label=None, signature_name=None):
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        if signature_name:
            spec.signature_name = signature_name

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise ServingError(e.code().name, e.details()) from None

    def predict_response(self, images, keys=None, model=DEFAULT_MODEL, version=None, label=None,
                         signature_name=None):
        """The raw PredictResponse (its model_spec says which version answered)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature_name)
        request.inputs["key"].CopyFrom(tf.make_tensor_proto(_keys(images, keys), dtype=tf.string))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
        return self._call(self.predictions.Predict, request)

    def predict(self, images, keys=None, model=DEFAULT_MODEL, version=None, label=None, signature_name=None):
        return rows(self.predict_response(images, keys, model, version, label, signature_name).outputs)

    def classify(self, images, model=DEFAULT_MODEL, version=None, label=None,
                 signature_name=defaults.CLASSIFY_SIGNATURE):
        """[label, score] pairs per image, from the Classify RPC (same shape as RestClient.classify)."""
        import numpy as np
        from tensorflow_serving.apis import classification_pb2

        from flowers.serving import json_tensor

        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, model, version, label, signature_name)
        for data in images:
            request.input.example_list.examples.add().features.feature[
                defaults.IMAGE_FEATURE].bytes_list.value.append(data)
        response = self._call(self.predictions.Classify, request)
        return [[[c.label, json_tensor.float32_json(np.float32(c.score))] for c in row.classes]
                for row in response.result.classifications]

    def status(self, model=DEFAULT_MODEL, version=None, label=None):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response = self._call(self.models.GetModelStatus, request)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def metadata(self, model=DEFAULT_MODEL, version=None, label=None):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self._call(self.predictions.GetModelMetadata, request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        opts = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
        return {"model_spec": json_format.MessageToDict(response.model_spec, **opts),
                "metadata": {"signature_def": json_format.MessageToDict(sig_map, **opts)}}


def rows(outputs):
    """PredictResponse.outputs -> exactly what TF Serving's REST row format returns for them."""
    import tensorflow as tf

    from flowers.serving import json_tensor

    arrays = {name: tf.make_ndarray(proto) for name, proto in outputs.items()}
    return json_tensor.to_json(arrays, json_tensor.ROW)["predictions"]
