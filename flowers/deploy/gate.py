"""The deploy gate: a candidate model is deployed only when its eval accuracy passes a
threshold and is not worse than the version the `stable` label serves now."""
import json

from flowers.core import defaults, model_config, storage
from flowers.deploy import stores, versions

METRICS_FILE = f"assets.extra/{defaults.METRICS_FILE}"  # inside a version folder; TF Serving ignores it


def version_metrics(version_path):
    """metrics.json exported with a model version, or None if it has none."""
    path = storage.join(version_path, METRICS_FILE)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def stable_accuracy(config_file, model_name=defaults.MODEL_NAME, label=defaults.STABLE):
    """(version, eval accuracy) of what `label` serves now, or (None, None) if nothing is deployed.

    config_file is a path (local, gs://) or configmap://NAMESPACE/NAME, as for `flowers versions`."""
    if not config_file:
        return None, None
    try:  # a file (local, gs://) or configmap://NAMESPACE/NAME
        model = model_config.find(stores.load(config_file), model_name)
    except KeyError:
        return None, None
    version = model.version_labels.get(label)
    if version is None:
        return None, None
    metrics = version_metrics(storage.join(model.base_path, str(version)))
    return version, (metrics or {}).get("accuracy")


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
