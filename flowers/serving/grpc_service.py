"""TF Serving's gRPC services on grpcio's asyncio server, with the generated stubs from
tensorflow-serving-api: PredictionService.Predict / Classify / Regress / MultiInference /
GetModelMetadata and ModelService.GetModelStatus / HandleReloadConfigRequest.
"""
import asyncio
import logging
import os
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (classification_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from flowers.core import storage
from flowers.serving import inference, models
from flowers.serving.errors import Code, ServingError, internal, invalid

# Requests above this many bytes are converted to and from numpy off the event loop.
LARGE_MESSAGE = 256 * 1024

log = logging.getLogger(__name__)


def _spec_args(spec):
    """ModelSpec -> (name, version or None, label or None)."""
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


def _to_array(name, proto, signature):
    spec = signature.inputs.get(name)
    if spec is not None and proto.dtype != spec.dtype.as_datatype_enum:
        got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "invalid"
        raise invalid(f"Expects arg[{sorted(signature.inputs).index(name)}] to be {spec.dtype.name} "
                      f"but {got} is provided")
    _check_declared_size(name, proto)
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - malformed TensorProto
        raise invalid(f"Input {name}: cannot parse the TensorProto: {e}") from None


# TensorProto's typed field per dtype, as Tensor::AsProtoField fills them (TF Serving's outputs).
_TYPED_FIELDS = {tf.float32: "float_val", tf.float64: "double_val", tf.int32: "int_val", tf.int16: "int_val",
                 tf.int8: "int_val", tf.uint8: "int_val", tf.uint16: "int_val", tf.int64: "int64_val",
                 tf.uint32: "uint32_val", tf.uint64: "uint64_val", tf.bool: "bool_val", tf.string: "string_val",
                 tf.float16: "half_val", tf.bfloat16: "half_val"}


def tensor_proto(arr):
    """ndarray -> TensorProto with the values in the typed field (float_val, string_val, ...),
    not tensor_content: clients reading `float_val` get the values, as from TF Serving."""
    arr = np.asarray(arr)
    fast = _typed_directly(arr)
    if fast is not None:
        return fast
    proto = tf.make_tensor_proto(arr)
    field = _TYPED_FIELDS.get(tf.dtypes.as_dtype(proto.dtype))
    if field and field != "half_val" and proto.tensor_content:
        proto.tensor_content = b""
        getattr(proto, field).extend(np.asarray(arr).ravel().tolist())
    return proto


# The every-request outputs (float scores, int predictions, bytes keys) go straight into their
# typed field: tf.make_tensor_proto took 0.12 ms for the three.
_DIRECT_DTYPES = {np.dtype(t): tf.as_dtype(t) for t in (np.float32, np.float64, np.int32, np.int64)}


def _typed_directly(arr):
    """TensorProto of a float, int or bytes array, built without tf.make_tensor_proto; None otherwise."""
    if arr.dtype == object:
        dtype = tf.string if all(isinstance(v, bytes) for v in arr.flat) else None
    else:
        dtype = _DIRECT_DTYPES.get(arr.dtype)
    if dtype is None:
        return None
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape)
    getattr(proto, _TYPED_FIELDS[dtype]).extend(arr.ravel().tolist())
    return proto


def _check_declared_size(name, proto):
    """Refuse a TensorProto whose shape declares more elements than it carries, before
    anything is expanded: 139 bytes declaring 2,000,000 strings must not allocate them.
    (TF would repeat the last value to fill the shape; clients built with make_tensor_proto
    from arrays always carry every value.)"""
    if any(d.size < 0 for d in proto.tensor_shape.dim):
        raise invalid(f"Input {name}: negative dimension in tensor_shape")
    declared = 1
    for d in proto.tensor_shape.dim:
        declared *= d.size
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise invalid(f"Input {name}: unknown dtype {proto.dtype}") from None
    field = _TYPED_FIELDS.get(dtype)
    if proto.tensor_content:
        carried = len(proto.tensor_content) // max(1, dtype.size)
    elif field:
        carried = len(getattr(proto, field)) // (2 if dtype.is_complex else 1)
    else:
        carried = declared
    if carried == declared:
        return
    raise invalid(f"Input {name}: tensor_shape declares {declared} elements but the message carries {carried}")


class _Observed:
    """Counts and times one RPC, aborting with its ServingError's code."""

    def __init__(self, metrics, api):
        self.metrics, self.api = metrics, api

    async def __call__(self, context, model_name, work):
        started, status = time.monotonic(), Code.OK
        try:
            return await work()
        except ServingError as e:
            status = e.code
            await context.abort(e.code, e.message)
        except asyncio.CancelledError:
            status = Code.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not take the server down
            log.exception("%s failed", self.api)
            status = Code.INTERNAL
            await context.abort(Code.INTERNAL, internal().message)
        finally:
            if self.metrics:
                self.metrics.observe(model_name, self.api, "GRPC", status.name, time.monotonic() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics=None):
        self.manager = manager
        self._predict, self._metadata = _Observed(metrics, "predict"), _Observed(metrics, "metadata")
        self._observed = {inference.CLASSIFY: _Observed(metrics, "classify"),
                          inference.REGRESS: _Observed(metrics, "regress"), "multi": _Observed(metrics, "multi_inference")}

    async def Predict(self, request, context):
        async def work():
            servable = self.manager.resolve(*_spec_args(request.model_spec))
            signature = servable.signature(request.model_spec.signature_name)
            models.outputs_filter(signature.outputs, list(request.output_filter))  # checks names first
            large = request.ByteSize() > LARGE_MESSAGE
            inputs = await _maybe_off_loop(large, lambda: {
                name: _to_array(name, proto, signature) for name, proto in request.inputs.items()})
            outputs = await self.manager.predict(servable, signature, inputs)

            def build():
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = signature.name
                for name, arr in models.outputs_filter(outputs, list(request.output_filter)).items():
                    response.outputs[name].CopyFrom(tensor_proto(arr))
                return response
            return await _maybe_off_loop(large or sum(a.nbytes for a in outputs.values()) > LARGE_MESSAGE, build)
        return await self._predict(context, request.model_spec.name, work)

    async def _examples(self, request, context, method, response):
        async def work():
            servable = self.manager.resolve(*_spec_args(request.model_spec))
            signature = servable.signature(request.model_spec.signature_name)
            response.result.CopyFrom(await inference.run(self.manager, servable, signature, method, request.input))
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature.name
            return response
        return await self._observed[method](context, request.model_spec.name, work)

    async def Classify(self, request, context):
        return await self._examples(request, context, inference.CLASSIFY, classification_pb2.ClassificationResponse())

    async def Regress(self, request, context):
        return await self._examples(request, context, inference.REGRESS, regression_pb2.RegressionResponse())

    async def MultiInference(self, request, context):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        return await self._observed["multi"](context, name, lambda: inference.multi_inference(self.manager, request))

    async def GetModelMetadata(self, request, context):
        async def work():
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != "signature_def":
                    raise invalid(f"Metadata field {field} is not supported")
            return self.manager.metadata(*_spec_args(request.model_spec))
        return await self._metadata(context, request.model_spec.name, work)


async def _maybe_off_loop(large, fn):
    return await asyncio.get_running_loop().run_in_executor(None, fn) if large else fn()


def _under(path, root):
    """Is path inside root? Local paths are resolved (.., symlinks); URLs compared by prefix."""
    if storage.is_remote(path) or storage.is_remote(root):
        path, root = (p.rstrip("/") for p in (path, root))
        return not any(part in (".", "..") for part in path.split("/")) and (
            path == root or path.startswith(root + "/"))
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_reload(config, roots):
    """HandleReloadConfigRequest is unauthenticated in TF Serving: here it is refused unless the
    server was started with reload roots, and then only for base paths under one of them."""
    if roots is None:
        raise ServingError(Code.PERMISSION_DENIED, "HandleReloadConfigRequest is disabled on this server "
                           "(start it with --allow_reload_config_requests)")
    for model in config.model_config_list.config:
        if not any(_under(model.base_path, root) for root in roots):
            raise ServingError(Code.PERMISSION_DENIED,
                               f"model {model.name}: base_path is outside the roots this server was started with")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager, metrics=None, reload_roots=None):
        self.manager, self.reload_roots = manager, reload_roots
        self._status, self._reload = _Observed(metrics, "status"), _Observed(metrics, "reload_config")

    async def GetModelStatus(self, request, context):
        async def work():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            return self.manager.status(*_spec_args(request.model_spec))
        return await self._status(context, request.model_spec.name, work)

    async def HandleReloadConfigRequest(self, request, context):
        async def work():
            check_reload(request.config, self.reload_roots)
            await self.manager.apply_config(request.config)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.SetInParent()
            return response
        return await self._reload(context, "", work)


def channel_arguments(text):
    """--grpc_channel_arguments "k1=v1,k2=v2" -> [(k, v)]; integer values as ints, as TF Serving."""
    options = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        options.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return options


def make_server(manager, *, metrics=None, max_request_bytes=32 << 20, options=(), reload_roots=None):
    # so_reuseport off: a second server on a taken port must fail, not split the traffic.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_request_bytes),
                                      ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0),
                                      *options])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, metrics, reload_roots), server)
    return server
