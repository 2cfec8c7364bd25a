"""`flowers data import DIR`: a folder-per-class tree -> train_set.csv, eval_set.csv, dict.txt,
split per class (stratified) and deterministically for a seed."""
import random

from flowers.core import defaults, storage
from flowers.data import rows as csv_rows

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def stratified_split(tree, eval_fraction, seed):
    """{label: [paths]} -> (train, eval) lists of (path, label), deterministic for a seed."""
    rng = random.Random(seed)
    train, evals = [], []
    for label in sorted(tree):
        paths = sorted(tree[label])
        rng.shuffle(paths)
        n_eval = round(len(paths) * eval_fraction)
        if eval_fraction > 0 and len(paths) > 1:
            n_eval = min(max(n_eval, 1), len(paths) - 1)
        evals += [(p, label) for p in paths[:n_eval]]
        train += [(p, label) for p in paths[n_eval:]]
    return train, evals


def scan_tree(root):
    """{class folder name: [image paths]} for the class folders under root that hold images."""
    tree = {}
    for name in storage.listdir(root):
        folder = storage.join(root, name)
        if storage.isdir(folder):
            files = [storage.join(folder, f) for f in storage.listdir(folder)
                     if f.lower().endswith(IMAGE_EXTENSIONS)]
            if files:
                tree[name] = files
    if not tree:
        raise ValueError(f"{root}: no class folders with images")
    return tree


def import_tree(root, output, eval_fraction=defaults.EVAL_FRACTION, seed=defaults.SPLIT_SEED):
    """Write OUT/train_set.csv, OUT/eval_set.csv, OUT/dict.txt; returns (labels, n_train, n_eval)."""
    root = root if storage.is_remote(root) else storage.dirname(storage.join(root, "x"))
    tree = scan_tree(root)
    train, evals = stratified_split(tree, eval_fraction, seed)
    labels = sorted(tree)
    storage.write_text(storage.join(output, "dict.txt"), "".join(f"{label}\n" for label in labels))
    csv_rows.write_rows(storage.join(output, "train_set.csv"), train)
    csv_rows.write_rows(storage.join(output, "eval_set.csv"), evals)
    return labels, len(train), len(evals)
