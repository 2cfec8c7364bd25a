"""TF Serving's batching and monitoring config protos, read from the same text files.

The tensorflow-serving-api wheel ships the apis/ protos and some config/ protos,
but not `session_bundle_config.proto` (BatchingParameters) nor
`monitoring_config.proto` (MonitoringConfig). When TF Serving's generated modules
are importable we use them; otherwise we declare the same messages here, with TF
Serving's package, names and field numbers, so one text file serves both servers.
"""
import functools
import logging

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from flowers.core import storage

log = logging.getLogger(__name__)

# tensorflow_serving/servables/tensorflow/session_bundle_config.proto (BatchingParameters only)
# and tensorflow_serving/config/monitoring_config.proto.
_INT64, _STRING, _BOOL, _MESSAGE = (descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                                     descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                     descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                                     descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
_MESSAGES = {
    "BatchingParameters": [
        ("max_batch_size", 1, _MESSAGE, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _MESSAGE, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _MESSAGE, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _MESSAGE, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _INT64, "repeated"),
        ("pad_variable_length_inputs", 7, _BOOL, None),
    ],
    "PrometheusConfig": [("enable", 1, _BOOL, None), ("path", 2, _STRING, None)],
    "MonitoringConfig": [("prometheus_config", 1, _MESSAGE, ".tensorflow.serving.PrometheusConfig")],
}


@functools.cache
def _declare():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(name="flowers/serving/tf_serving_configs.proto",
                                             package="tensorflow.serving", syntax="proto3",
                                             dependency=["google/protobuf/wrappers.proto"])
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for field_name, number, ftype, extra in fields:
            repeated = extra == "repeated"
            field = msg.field.add(name=field_name, number=number, type=ftype, label=(
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL))
            if ftype == _MESSAGE:
                field.type_name = extra
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in _MESSAGES}


try:
    from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
except ImportError:
    BatchingParameters = _declare()["BatchingParameters"]
try:
    from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
except ImportError:
    MonitoringConfig = _declare()["MonitoringConfig"]


def parse(text, message_class, source="<text>"):
    """Text proto -> message. Fields newer TF Serving releases added (unknown here) are
    skipped with a warning rather than refusing a file the real server accepts."""
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as e:
        if "has no field named" not in str(e):
            raise ValueError(f"{source}: {e}") from e
        log.warning("%s: %s; ignoring fields this server does not know", source, e)
        return text_format.Parse(text, message_class(), allow_unknown_field=True)


def load_batching(path):
    return parse(storage.read_text(path), BatchingParameters, path)


def load_monitoring(path):
    return parse(storage.read_text(path), MonitoringConfig, path)
