"""Train photos whose label the out-of-fold heads doubt: OUT/label_issues.csv, to review by eye.

Each train row is scored by a head (the search's best parameters, on frozen features) that never
saw it. On the shared photos most of the most doubted rows are mislabelled or show no flower of
their class (docs/ACCURACY.md). Dropping them before training did not help there, so they are
listed, not removed: the user decides.
"""
import numpy as np

from flowers.data import rows as rows_lib

FOLDS = 3
COLUMNS = ("uri", "label", "predicted", "label_score", "predicted_score")


def doubtful(uris, scores, targets, labels):
    """Rows whose out-of-fold prediction is none of their labels, the lowest score for their labels first."""
    predicted = scores.argmax(axis=1)
    given = (scores * (targets > 0)).sum(axis=1)
    wrong = np.flatnonzero(targets[np.arange(len(targets)), predicted] <= 0)
    return [{"uri": uris[i], "label": " ".join(labels[j] for j in np.flatnonzero(targets[i] > 0)),
             "predicted": labels[predicted[i]], "label_score": round(float(given[i]), 4),
             "predicted_score": round(float(scores[i, predicted[i]]), 4)}
            for i in wrong[np.argsort(given[wrong], kind="stable")]]


def audit(params, data, path, folds=FOLDS, oof=None):
    """Writes PATH (CSV, COLUMNS) for data's train rows (fit + val); returns (doubted rows, all rows).
    oof: search.out_of_fold_scores(params, data, folds), when the caller has it already."""
    from flowers.automl import search

    scores, targets = oof if oof is not None else search.out_of_fold_scores(params, data, folds)  # fit, then val
    rows = doubtful(data["fit"][0] + data["val"][0], scores, targets, data["labels"])
    rows_lib.write_rows(path, [COLUMNS] + [[row[c] for c in COLUMNS] for row in rows])
    return len(rows), len(targets)
