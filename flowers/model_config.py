"""TF Serving's `models.config` (a ModelServerConfig in protobuf text format):
read, write and edit it with TF Serving's own protos, shared by `flowers serve`,
`flowers deploy` and `flowers versions`."""
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from flowers import storage

ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse(text):
    return text_format.Parse(text, ModelServerConfig())


def to_text(config):
    return text_format.MessageToString(config)


def load(path):
    return parse(storage.read_text(path))


def save(path, config):
    storage.write_text(path, to_text(config))


def single_model(name, base_path):
    """The config TF Serving builds from --model_name/--model_base_path (latest version served)."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = name, base_path, "tensorflow"
    return config


def find(config, name):
    for model in config.model_config_list.config:
        if model.name == name:
            return model
    raise KeyError(f"model {name!r} is not in the config")
