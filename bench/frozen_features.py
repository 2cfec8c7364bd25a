"""What the pooled stages add to a Lite embedding: a fixed head on frozen features, side by side.

    .venv/bin/python bench/frozen_features.py [--backbone efficientnet_lite0 efficientnet_lite2] [--splits 5]

Embeds every shared photo once per backbone (the served model's image function and backbone), then
trains the same head (fixed hyper-parameters, no search, 2 seeds) on each of N stratified 10 % splits
(flowers.data.importer.stratified_split, seeds 0..N-1) twice: on the head's 1280 pooled features
alone (the embedding's last 1280 values, what ImageNet's classifier reads) and on the whole embedding
(the last 4 stages' pooled outputs too). Prints held-out accuracy per split and the mean, and the same
for the mean of the backbones' scores (their ensemble). Nothing is chosen on the held-out photos.
"""
import argparse
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from flowers.automl import search, space, tuned_model  # noqa: E402
from flowers.core import backbones, images  # noqa: E402
from flowers.data import importer  # noqa: E402

PHOTOS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flower_photos"
HEAD = dict(learning_rate=1e-3, weight_decay=1e-4, dropout=0.5, label_smoothing=0.1, hidden_units=512, batch_size=64)
EPOCHS = 30
HEAD_SEEDS = (0, 1)
HEAD_ONLY = tuned_model.HEAD_FEATURES  # the head's pooled features: the embedding's last values


def embed(name, paths):
    size = backbones.get(name).image_size
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda uri: images.decode_and_resize(tf.io.read_file(uri), size), num_parallel_calls=tf.data.AUTOTUNE)
    return backbones.load(name).predict(ds.batch(32).prefetch(2), verbose=0)


def held_out_scores(x, y, train, held):
    """Mean over HEAD_SEEDS of a fixed head's scores on the held-out rows (no validation is used)."""
    scores = []
    for seed in HEAD_SEEDS:
        space.SEED = seed  # train_head seeds Keras from it
        data = {"fit": (None, x[train], y[train]), "val": (None, x[held[:1]], y[held[:1]]),
                "labels": range(y.shape[1]), "embedding_size": x.shape[1]}
        head, _ = search.train_head(HEAD, data, epochs=EPOCHS)
        scores.append(head.predict(x[held], verbose=0, batch_size=1024))
    return np.mean(scores, axis=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"])
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args()

    tree = importer.scan_tree(str(PHOTOS))
    labels = sorted(tree)
    paths = sorted(p for label in labels for p in tree[label])
    row = {p: i for i, p in enumerate(paths)}
    y = np.zeros((len(paths), len(labels)), np.float32)
    for k, label in enumerate(labels):
        y[[row[p] for p in tree[label]], k] = 1
    features = {}
    for name in args.backbone:
        t = time.time()
        features[name] = embed(name, paths)
        print(f"{name}: {len(paths)} photos embedded ({features[name].shape[1]} values) in {time.time() - t:.0f} s")

    results = {}  # (what, features) -> [accuracy per split]
    for split in range(args.splits):
        train_rows, held_rows = importer.stratified_split(tree, 0.1, split)
        train, held = np.array([row[p] for p, _ in train_rows]), np.array([row[p] for p, _ in held_rows])
        for kind in ("head's features", "whole embedding"):
            ensemble = []
            for name, x in features.items():
                s = held_out_scores(x[:, -HEAD_ONLY:] if kind == "head's features" else x, y, train, held)
                ensemble.append(s)
                results.setdefault((name, kind), []).append(search.accuracy(s, y[held]))
            if len(ensemble) > 1:
                results.setdefault(("ensemble (mean scores)", kind), []).append(
                    search.accuracy(np.mean(ensemble, axis=0), y[held]))
        print(f"split {split}: " + ", ".join(f"{n} / {k}: {a[-1]:.4f}" for (n, k), a in results.items()), flush=True)

    print(f"\nheld-out accuracy, {args.splits} stratified 10 % splits of {len(paths)} photos, a fixed head x "
          f"{len(HEAD_SEEDS)} seeds")
    for (name, kind), accs in results.items():
        print(f"{name:24} {kind:16} mean {np.mean(accs):.4f}  min {min(accs):.4f}  "
              + " ".join(f"{a:.4f}" for a in accs))


if __name__ == "__main__":
    main()
