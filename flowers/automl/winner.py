"""Export the winner with flowers.train.export (same signature, same image function) and score
THE EXPORTED MODEL on the eval images' raw bytes: the evaluation files describe exactly what
TF Serving will serve, so train/serve skew cannot hide between them."""
import json

import numpy as np
import tensorflow as tf

from flowers.core import base_path, defaults, storage
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


def export_and_evaluate(backbone_model, head, data, output, extra):
    """OUT/model/<version>/ + OUT/metrics.json, eval_predictions.jsonl, report.html (copied to assets.extra/).

    extra: more metrics.json keys (train_accuracy, train_loss, steps, the run's summary)."""
    labels = data["labels"]
    path = export.export(head, data["backbone"], labels, storage.join(output, "model"),
                         backbone_model=backbone_model)
    uris, _, targets = data["eval"]
    scores = score_export(path, uris)
    figures = metrics.summarize(scores, targets, labels)
    result = {**figures, "backbone": data["backbone"], "labels": labels, "n_eval": len(uris),
              "n_train": len(data["fit"][0]) + len(data["val"][0]),
              "version": base_path.version_of(path), **extra}
    predictions = metrics.prediction_lines(uris, scores, targets, labels)
    text = json.dumps(result, indent=2) + "\n"
    for folder in (output, storage.join(path, "assets.extra")):
        storage.write_text(storage.join(folder, defaults.METRICS_FILE), text)
        storage.write_text(storage.join(folder, defaults.EVAL_PREDICTIONS_FILE), predictions)
    report.write_report(output)  # report.html, as flowers train writes it: the console links to it
    storage.gfile.copy(storage.join(output, defaults.REPORT_FILE),
                       storage.join(path, "assets.extra", defaults.REPORT_FILE), overwrite=True)
    return path, result
