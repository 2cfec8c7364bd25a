"""Export the winner with flowers.train.export (same signature, same image function) and score
THE EXPORTED MODEL on the eval images' raw bytes: the evaluation files describe exactly what
TF Serving will serve, so train/serve skew cannot hide between them."""
import numpy as np
import tensorflow as tf

from flowers.core import base_path, storage
from flowers.train import export, metrics, report

EVAL_BATCH = 32


def score_export(export_path, uris):
    """serving_default over the raw bytes of `uris` -> scores [N, C]."""
    serve = tf.saved_model.load(export_path).signatures["serving_default"]
    scores = []
    for i in range(0, len(uris), EVAL_BATCH):
        chunk = uris[i:i + EVAL_BATCH]
        out = serve(key=tf.constant(chunk), image_bytes=tf.constant([storage.read_bytes(u) for u in chunk]))
        scores.append(out["scores"].numpy())
    return np.concatenate(scores) if scores else np.zeros((0, 0), np.float32)


def export_and_evaluate(members, data, output, extra):
    """OUT/model/<version>/ + OUT/metrics.json, eval_predictions.jsonl, report.html (copied to assets.extra/).

    members: [(backbone_name, backbone_model, head)], several for an ensemble.
    extra: more metrics.json keys (train_accuracy, train_loss, steps, the run's summary)."""
    labels = data["labels"]
    path = export.export_members(members, labels, storage.join(output, "model"))
    uris, _, targets = data["eval"]
    scores = score_export(path, uris)
    figures = metrics.summarize(scores, targets, labels)
    result = {**figures, "backbone": " + ".join(name for name, *_ in members), "labels": labels, "n_eval": len(uris),
              "n_train": len(data["fit"][0]) + len(data["val"][0]),
              "version": base_path.version_of(path), **extra}
    report.write_evaluation(output, path, result, metrics.prediction_lines(uris, scores, targets, labels))
    return path, result
