"""What the console reads besides the server: models.config (labels, policy, base path) and each
version folder's assets.extra/ (metrics.json, eval_predictions.jsonl, report.html).
Blocking (tf.io.gfile, local or gs://): the app calls these off the event loop."""
import datetime
import functools

from google.protobuf import text_format

from flowers.core import base_path as layout, defaults, model_config, storage
from flowers.train import report

ASSETS_EXTRA = "assets.extra"


def read_config(path, model_name):
    """{"file", "base_path", "policy", "labels": {label: version}} or {"error"}; None without a file."""
    if not path:
        return None
    try:
        model = model_config.find(model_config.load(path), model_name)
    except Exception as e:  # noqa: BLE001 - an unreadable config is shown, not fatal
        return {"file": path, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    policy = text_format.MessageToString(model.model_version_policy, as_one_line=True)
    return {"file": path, "base_path": model.base_path, "policy": policy or "latest { num_versions: 1 } (default)",
            "labels": dict(sorted(model.version_labels.items(), key=lambda kv: (kv[1], kv[0]))), "_model": model}


def version_folders(config):
    """{version: folder} on disk under the config's base path ({} without one)."""
    if not config or "base_path" not in config:
        return {}
    try:
        return layout.scan(config["base_path"])
    except Exception:  # noqa: BLE001 - e.g. gs:// without credentials: nothing to show
        return {}


def served_by_policy(config, on_disk):
    if not config or "_model" not in config:
        return set()
    return model_config.served_versions(config["_model"], on_disk)


def created(folder):
    """The SavedModel's write time (ISO, UTC), or None."""
    for name in layout.SAVED_MODEL_FILES:
        try:
            ns = storage.gfile.stat(storage.join(folder, name)).mtime_nsec
        except Exception:  # noqa: BLE001
            continue
        return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).isoformat(timespec="seconds")
    return None


@functools.lru_cache(maxsize=32)
def evaluation(folder):
    """(metrics, predictions) from FOLDER/assets.extra, cached: a version folder never changes.
    Raises FileNotFoundError when the version has no metrics.json."""
    extra = storage.join(folder, ASSETS_EXTRA)
    if not storage.exists(storage.join(extra, defaults.METRICS_FILE)):
        raise FileNotFoundError(f"no {defaults.METRICS_FILE} in {extra}")
    return report.load(extra)


def accuracy(folder):
    try:
        return evaluation(folder)[0].get("accuracy")
    except Exception:  # noqa: BLE001 - a version without (readable) metrics has no accuracy
        return None


def labels_of(folder):
    """The model's label list (dict order, as its scores), or None when unknown."""
    try:
        metrics = evaluation(folder)[0]
    except Exception:  # noqa: BLE001
        return None
    return metrics.get("labels") or metrics.get("confusion_matrix", {}).get("labels")


def report_path(folder):
    path = storage.join(folder, ASSETS_EXTRA, defaults.REPORT_FILE)
    return path if storage.exists(path) else None
