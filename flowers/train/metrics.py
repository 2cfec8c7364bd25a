"""Classification figures from scores and (possibly multi-label) targets, in plain numpy.

A row may carry several labels: a prediction is correct when it is any of them. For the
confusion matrix and per-class figures a row's true class is the predicted class when that
is one of its labels, otherwise its lowest label id; so the diagonal sums to the hits and
accuracy = trace / rows.
"""
import json

import numpy as np

EPSILON = 1e-7  # Keras' clip for log(0)


def summarize(scores, targets, labels):
    """scores [N, C] softmax, targets [N, C] (rows sum to 1, >0 marks a label) -> dict."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets, np.float64)
    n, n_labels = scores.shape
    predicted = scores.argmax(axis=1)
    hit = targets[np.arange(n), predicted] > 0
    truth = np.where(hit, predicted, targets.argmax(axis=1))
    confusion = np.zeros((n_labels, n_labels), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    tp, n_predicted, n_true = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    per_class = {
        label: {"precision": _ratio(tp[i], n_predicted[i]), "recall": _ratio(tp[i], n_true[i]),
                "support": int(n_true[i])}
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(hit.mean()) if n else 0.0,
        "loss": float(-(targets * np.log(np.clip(scores, EPSILON, 1.0))).sum(axis=1).mean()) if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(labels), "matrix": confusion.tolist()},
    }


def _ratio(a, b):
    return float(a / b) if b else 0.0


def prediction_lines(uris, scores, targets, labels):
    """eval_predictions.jsonl: {"uri", "labels", "predicted", "scores"} per row, in record order."""
    return "".join(json.dumps({"uri": uri, "labels": [labels[i] for i in np.flatnonzero(target > 0)],
                               "predicted": labels[int(np.argmax(row))], "scores": [float(s) for s in row]}) + "\n"
                   for uri, row, target in zip(uris, scores, targets))
