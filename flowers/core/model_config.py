"""TF Serving's `models.config` (a ModelServerConfig in protobuf text format): read, write and
edit it with TF Serving's own protos, and its version policy; shared by `flowers serve`,
`flowers deploy`, `flowers versions` and the deploy gate."""
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from flowers.core import storage

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


def served_versions(model, on_disk):
    """The versions a ModelConfig's version policy serves, of those on disk: TF Serving's
    `latest { num_versions: N }` (N = 1 by default and when no policy is set), `all`, or
    `specific { versions: ... }`. The one rule the server and `flowers versions` both use."""
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return set(policy.specific.versions) & set(on_disk)
    n = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(sorted(on_disk)[-n:])
