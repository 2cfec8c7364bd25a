"""The deploy gate: a candidate model is deployed only when its eval accuracy passes a
threshold and is not worse than the version the `stable` label serves now.

It fails closed: when `stable` names a version whose metrics cannot be read, or models.config
itself cannot be read, it refuses with the reason rather than deploying blind."""
import json

import tensorflow as tf
from google.protobuf import text_format

from flowers.core import defaults, model_config, storage
from flowers.deploy import stores

METRICS_FILE = f"assets.extra/{defaults.METRICS_FILE}"  # inside a version folder; TF Serving ignores it


class GateError(Exception):
    """What the gate needs to compare against cannot be read."""


def version_metrics(version_path):
    """metrics.json exported with a model version, or None if it has none."""
    path = storage.join(version_path, METRICS_FILE)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def stable_accuracy(config_file, base_path=None, model_name=defaults.MODEL_NAME, label=defaults.STABLE):
    """(version, eval accuracy) of what `label` serves now, or (None, None) if nothing is deployed.

    config_file is a path (local, gs://) or configmap://NAMESPACE/NAME, as for `flowers versions`.
    base_path is where the versions are as *this* process sees them (the pipeline's
    model_base_path); the config's base_path is the server's view (e.g. /models/flowers in a pod)
    and is only the fallback. Raises GateError when the config or the labelled version's metrics
    cannot be read."""
    if not config_file:
        return None, None
    try:
        config = stores.load(config_file)
    except (stores.StoreError, text_format.ParseError, OSError, tf.errors.OpError) as e:
        raise GateError(f"cannot read {config_file}: {e}") from None
    try:
        model = model_config.find(config, model_name)
    except KeyError:
        return None, None
    version = model.version_labels.get(label)
    if version is None:
        return None, None
    version_path = storage.join(base_path or model.base_path, str(version))
    try:
        metrics = version_metrics(version_path)
    except (OSError, ValueError, tf.errors.OpError) as e:  # gfile raises tf.errors (denied, gs:// auth)
        raise GateError(f"cannot read {label} version {version}'s metrics under {version_path}: {e}") from None
    accuracy = metrics.get("accuracy") if isinstance(metrics, dict) else None
    if not isinstance(accuracy, (int, float)):
        raise GateError(f"cannot read {label} version {version}'s eval accuracy: "
                        f"{storage.join(version_path, METRICS_FILE)} is missing or has none")
    return version, float(accuracy)


def decide(accuracy, threshold, stable_version=None, stable_acc=None):
    """(deploy?, reason) for a candidate's eval accuracy."""
    if accuracy is None:
        return False, "candidate has no eval accuracy"
    if accuracy < threshold:
        return False, f"eval accuracy {accuracy:.4f} is below the threshold {threshold:.4f}"
    if stable_acc is not None and accuracy < stable_acc:
        return False, (f"eval accuracy {accuracy:.4f} is worse than stable version {stable_version} "
                       f"({stable_acc:.4f})")
    against = f"stable version {stable_version} ({stable_acc:.4f})" if stable_acc is not None else "no stable version"
    return True, f"eval accuracy {accuracy:.4f} passes the threshold {threshold:.4f} and {against}"


def check(accuracy, threshold, config_file, base_path=None, model_name=defaults.MODEL_NAME,
          label=defaults.STABLE):
    """(deploy?, reason): decide() against what `label` serves now; refuses when that is unreadable."""
    try:
        stable_version, stable_acc = stable_accuracy(config_file, base_path, model_name, label)
    except GateError as e:
        return False, f"{e}; refusing to deploy (fix it, or move the label with `flowers versions`)"
    return decide(accuracy, threshold, stable_version, stable_acc)
