"""What `flowers train` reads: preprocess's gzipped TFRecords and their metadata, checked, as tf.data.

Paths are comma-separated glob patterns (local or gs://), each PREFIX-*.tfrecord.gz with its
PREFIX.metadata.json; every pattern must match and all metadata must agree.
"""
import json

import numpy as np
import tensorflow as tf

from flowers.core import backbones, records, storage

MAX_SHUFFLE_BUFFER = 100_000
METADATA_KEYS = ("labels", "backbone", "embedding_size")


class TrainError(ValueError):
    """Inputs that cannot be trained on; the CLI prints it as one line."""


def read_inputs(patterns, role):
    """(shard files, metadata) for comma-separated record globs; TrainError when any is missing."""
    files, metadata = [], None
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        matched = storage.glob(pattern)
        if not matched:
            raise TrainError(f"no {role} records match {pattern}")
        meta = _read_metadata(records.prefix_of(pattern), role)
        if metadata is not None:
            _check_same(metadata, meta, f"{role} patterns")
        files, metadata = files + [f for f in matched if f not in files], metadata or meta
    if metadata is None:
        raise TrainError(f"no {role} record patterns given")
    return files, metadata


def _read_metadata(prefix, role):
    path = records.metadata_path(prefix)
    try:
        metadata = records.read_metadata(prefix)
    except (OSError, tf.errors.NotFoundError, json.JSONDecodeError) as e:  # local, gs://
        raise TrainError(f"cannot read {role} metadata {path}: {str(e).splitlines()[0]}") from None
    if not metadata.get("labels") or not isinstance(metadata["labels"], list):
        raise TrainError(f"{role} metadata {path} has no labels")
    for key in METADATA_KEYS[1:]:
        if key not in metadata:
            raise TrainError(f"{role} metadata {path} has no {key}")
    return metadata


def _check_same(a, b, what):
    for key in METADATA_KEYS:
        if a[key] != b[key]:
            raise TrainError(f"{what} disagree on {key}: {a[key]!r} != {b[key]!r}")


def check_metadata(train_meta, eval_meta):
    """Train and eval must come from the same backbone and label dictionary."""
    _check_same(train_meta, eval_meta, "train and eval metadata")
    try:
        spec = backbones.get(train_meta["backbone"])
    except ValueError as e:
        raise TrainError(str(e)) from None
    if spec.embedding_size != train_meta["embedding_size"]:
        raise TrainError(f"metadata embedding_size {train_meta['embedding_size']} differs from "
                         f"{spec.name}'s {spec.embedding_size} (embeddings of an older flowers?): preprocess again")
    # The exported model feeds the backbone image_size pixels: embeddings of other sizes would skew.
    for role, meta in (("train", train_meta), ("eval", eval_meta)):
        if meta.get("image_size", spec.image_size) != spec.image_size:
            raise TrainError(f"the {role} embeddings were made from {meta['image_size']} px images; {spec.name} "
                             f"now takes {spec.image_size} px: preprocess again")


def count_records(files, embedding_size, n_labels, role):
    """One cheap pass: the number of rows; TrainError on wrong embedding sizes or label ids."""
    spec = {"embedding": tf.io.VarLenFeature(tf.float32), "label": tf.io.VarLenFeature(tf.int64)}
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024)
    n = 0
    try:
        for batch in ds.map(lambda s: tf.io.parse_example(s, spec)):
            sizes = tf.RaggedTensor.from_sparse(batch["embedding"]).row_lengths().numpy()
            label_counts = tf.RaggedTensor.from_sparse(batch["label"]).row_lengths().numpy()
            label_ids = batch["label"].values.numpy()
            if (sizes != embedding_size).any():
                bad = sorted(set(sizes[sizes != embedding_size].tolist()))
                raise TrainError(f"{role} records have embeddings of size {bad}, metadata says "
                                 f"{embedding_size}")
            if (label_counts == 0).any():
                raise TrainError(f"{role} records: {int((label_counts == 0).sum())} rows have no label")
            if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= n_labels):
                raise TrainError(f"{role} records have label ids outside the metadata's "
                                 f"{n_labels} labels")
            n += len(sizes)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise TrainError(f"unreadable {role} records: {e.message.splitlines()[0]}") from None
    if n == 0:
        raise TrainError(f"{role} records are empty: {', '.join(files)}")
    return n


def soft_targets(sparse_labels, n_labels):
    """A row with k labels gives each 1/k."""
    hot = tf.cast(tf.sparse.to_indicator(sparse_labels, n_labels), tf.float32)
    return hot / tf.reduce_sum(hot, axis=1, keepdims=True)


def make_dataset(files, embedding_size, n_labels, batch_size, rows, shuffle_seed=None):
    """Batches of (embeddings, targets) over the `rows` records: one pass in record order (of a
    known length, so Keras needs not run out of data to find it), or shuffled and repeated forever."""
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").apply(tf.data.experimental.assert_cardinality(rows))
    if shuffle_seed is not None:
        ds = ds.cache().shuffle(min(rows, MAX_SHUFFLE_BUFFER), seed=shuffle_seed).repeat()

    def parse(serialized):
        row = records.parse(serialized, embedding_size)
        return row["embedding"], soft_targets(row["label"], n_labels)

    return ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def uris_and_targets(files, embedding_size, n_labels):
    """Every row's image uri and soft target, in record order (make_dataset's order)."""
    uris, targets = [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024):
        row = records.parse(batch, embedding_size)
        uris += [u.decode() for u in row["image_uri"].numpy()]
        targets.append(soft_targets(row["label"], n_labels).numpy())
    return uris, np.concatenate(targets)
