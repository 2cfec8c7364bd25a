"""`flowers train`: the lab's head on preprocessed embeddings, its metrics, and one servable model.

Reads the gzipped TFRecords that `flowers preprocess` writes (PREFIX-*.tfrecord.gz, local or
gs://) and their PREFIX.metadata.json (labels, backbone), trains a small head on the embeddings,
evaluates it on the eval set every `eval_every` steps and at the end, and writes under OUTPUT:

    OUTPUT/checkpoints/        a killed run started again with the same OUTPUT resumes from here
    OUTPUT/logs/{train,eval}/  TensorBoard
    OUTPUT/metrics.json        eval and train accuracy/loss, per-class precision/recall, confusion
    OUTPUT/model/<version>/    the SavedModel (image bytes in, see flowers.export), with
                               assets.extra/metrics.json for the deploy gate

Rows with several labels: the target spreads evenly over them (multi-hot / k, one-hot for the
usual row) and a prediction counts as correct when it is any of them; the served `prediction`
is the argmax of the softmax scores.
"""
import argparse
import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from flowers.core import backbones, defaults, records, storage
from flowers.core.defaults import BATCH_SIZE, DROPOUT, EVAL_EVERY, HIDDEN_UNITS, LEARNING_RATE, MAX_STEPS
from flowers.train import export, metrics

# Hyper-parameters: the lab's defaults (BATCH_SIZE, DROPOUT, ... above, from flowers.core.defaults).
SEED = 0
KEEP_CHECKPOINTS = 3
MAX_SHUFFLE_BUFFER = 100_000


class TrainError(ValueError):
    """Inputs that cannot be trained on; the CLI prints it as one line."""


def build_head(embedding_size, n_labels, hidden_units=HIDDEN_UNITS, dropout=DROPOUT):
    """The lab's head: embedding -> Dense ReLU -> Dropout -> Dense softmax."""
    return keras.Sequential([
        keras.Input((embedding_size,), name="embedding"),
        keras.layers.Dense(hidden_units, activation="relu", name="hidden"),
        keras.layers.Dropout(dropout, name="dropout"),
        keras.layers.Dense(n_labels, activation="softmax", name="scores"),
    ], name="head")


def distribution_strategy():
    """All local GPUs when there are any, else the default (CPU) strategy."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


# What tensorboard's summary.scalar writes: a float tensor tagged for the scalars plugin. Written
# with TF's own summary op, so training needs no tensorboard package (TF 2.21 does not pull it in).
SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def log_scalar(writer, tag, value, step):
    with writer.as_default():
        tf.summary.write(tag, tf.constant(float(value)), step=step, metadata=SCALAR_METADATA)


# --- Inputs -------------------------------------------------------------------------------

def read_inputs(pattern, role):
    """(shard files, metadata) for a records glob; TrainError when either is missing."""
    files = storage.glob(pattern)
    if not files:
        raise TrainError(f"no {role} records match {pattern}")
    prefix = records.prefix_of(pattern)
    try:
        metadata = records.read_metadata(prefix)
    except (OSError, tf.errors.NotFoundError, json.JSONDecodeError) as e:
        raise TrainError(f"cannot read {role} metadata {records.metadata_path(prefix)}: "
                         f"{str(e).splitlines()[0]}") from None
    labels = metadata.get("labels")
    if not labels or not isinstance(labels, list):
        raise TrainError(f"{role} metadata {records.metadata_path(prefix)} has no labels")
    for key in ("backbone", "embedding_size"):
        if key not in metadata:
            raise TrainError(f"{role} metadata {records.metadata_path(prefix)} has no {key}")
    return files, metadata


def check_metadata(train_meta, eval_meta):
    """Train and eval must come from the same backbone and label dictionary."""
    for key in ("labels", "backbone", "embedding_size"):
        if train_meta[key] != eval_meta[key]:
            raise TrainError(f"train and eval metadata disagree on {key}: "
                             f"{train_meta[key]!r} != {eval_meta[key]!r}")
    try:
        spec = backbones.get(train_meta["backbone"])
    except ValueError as e:
        raise TrainError(str(e)) from None
    if spec.embedding_size != train_meta["embedding_size"]:
        raise TrainError(f"metadata embedding_size {train_meta['embedding_size']} differs from "
                         f"{spec.name}'s {spec.embedding_size}")


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


def to_features_and_targets(features, n_labels):
    """Parsed batch -> (embeddings, targets); a row with k labels gives each 1/k."""
    hot = tf.cast(tf.sparse.to_indicator(features["label"], n_labels), tf.float32)
    return features["embedding"], hot / tf.reduce_sum(hot, axis=1, keepdims=True)


def make_dataset(files, embedding_size, n_labels, batch_size, shuffle_seed=None, buffer=None):
    """Batches of (embeddings, targets): one ordered pass, or shuffled and repeated forever."""
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle_seed is not None:
        ds = ds.cache().shuffle(min(buffer, MAX_SHUFFLE_BUFFER), seed=shuffle_seed).repeat()
    ds = ds.batch(batch_size).map(
        lambda s: to_features_and_targets(records.parse(s, embedding_size), n_labels),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# --- Training -----------------------------------------------------------------------------

def evaluate(predict, dataset, labels):
    """predict(embeddings) -> scores over one pass of `dataset` -> flowers.metrics.summarize dict."""
    scores, targets = [], []
    for x, y in dataset:
        scores.append(predict(x).numpy())
        targets.append(y.numpy())
    return metrics.summarize(np.concatenate(scores), np.concatenate(targets), labels)


def train(train_data_paths, eval_data_paths, output_path, max_steps=MAX_STEPS, batch_size=BATCH_SIZE,
          learning_rate=LEARNING_RATE, dropout=DROPOUT, hidden_units=HIDDEN_UNITS, eval_every=EVAL_EVERY,
          verbose=True, strategy=None):
    """Train (or resume), evaluate, export. Returns {"metrics", "export_path", "version"}.

    strategy: a tf.distribute strategy; by default every local GPU, else the CPU.
    """
    started = time.time()
    log = (lambda msg: print(msg, flush=True)) if verbose else (lambda msg: None)
    if max_steps < 0 or batch_size < 1 or hidden_units < 1 or eval_every < 1 or not 0 <= dropout < 1:
        raise TrainError("need max_steps >= 0, batch_size >= 1, hidden_units >= 1, eval_every >= 1 "
                         "and 0 <= dropout < 1")

    train_files, meta = read_inputs(train_data_paths, "train")
    eval_files, eval_meta = read_inputs(eval_data_paths, "eval")
    check_metadata(meta, eval_meta)
    labels, backbone, embedding_size = meta["labels"], meta["backbone"], meta["embedding_size"]
    n_train = count_records(train_files, embedding_size, len(labels), "train")
    n_eval = count_records(eval_files, embedding_size, len(labels), "eval")
    log(f"{backbone}: {n_train} train rows, {n_eval} eval rows, {len(labels)} labels")

    strategy = strategy or distribution_strategy()
    keras.utils.set_random_seed(SEED)
    with strategy.scope():
        head = build_head(embedding_size, len(labels), hidden_units, dropout)
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(head.trainable_variables)  # so a checkpoint restores its slots at once
    loss_fn = keras.losses.CategoricalCrossentropy(reduction=None)

    # optimizer.iterations is the step: it is saved and restored with the weights.
    checkpoint = tf.train.Checkpoint(head=head, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, storage.join(output_path, "checkpoints"),
                                         max_to_keep=KEEP_CHECKPOINTS)
    if manager.latest_checkpoint:
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise TrainError(f"{manager.latest_checkpoint} does not fit this head (other labels or "
                             f"hidden_units?); use another --output_path: {str(e).splitlines()[0]}") from None
    start_step = int(optimizer.iterations.numpy())
    if start_step:
        log(f"resuming from step {start_step} ({manager.latest_checkpoint})")

    def train_step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, head(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
        grads = tape.gradient(loss, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    predict = tf.function(lambda x: head(x, training=False))  # inference mode: no dropout

    @tf.function
    def train_steps(iterator, n):
        """n steps in one graph call; returns their mean training loss."""
        total = tf.constant(0.0)
        for _ in tf.range(n):
            x, y = next(iterator)
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(train_step, (x, y)), axis=None)
        return total / tf.cast(n, tf.float32)

    # A resumed run shuffles with another seed, so it does not replay the batches already seen.
    train_ds = make_dataset(train_files, embedding_size, len(labels), batch_size,
                            shuffle_seed=SEED + start_step, buffer=n_train)
    eval_ds = make_dataset(eval_files, embedding_size, len(labels), batch_size)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    train_writer = tf.summary.create_file_writer(storage.join(output_path, "logs", "train"))
    eval_writer = tf.summary.create_file_writer(storage.join(output_path, "logs", "eval"))

    step = start_step
    while step < max_steps:
        n = min(eval_every - step % eval_every, max_steps - step)
        train_loss = float(train_steps(iterator, tf.constant(n)))
        step = int(optimizer.iterations.numpy())
        evaluation = evaluate(predict, eval_ds, labels)
        log_scalar(train_writer, "loss", train_loss, step)
        log_scalar(eval_writer, "loss", evaluation["loss"], step)
        log_scalar(eval_writer, "accuracy", evaluation["accuracy"], step)
        manager.save(checkpoint_number=step)
        log(f"step {step}/{max_steps}: train_loss {train_loss:.4f} eval_loss {evaluation['loss']:.4f} "
            f"eval_accuracy {evaluation['accuracy']:.4f}")

    # Final figures, train set in inference mode (no dropout) like the eval set.
    train_eval_ds = make_dataset(train_files, embedding_size, len(labels), batch_size)
    train_figures, eval_figures = evaluate(predict, train_eval_ds, labels), evaluate(predict, eval_ds, labels)
    log_scalar(train_writer, "final_accuracy", train_figures["accuracy"], step)
    log_scalar(eval_writer, "final_accuracy", eval_figures["accuracy"], step)
    train_writer.close()
    eval_writer.close()

    # Export a plain (non-distributed) copy of the head with the backbone in front of it.
    serving_head = build_head(embedding_size, len(labels), hidden_units, dropout)
    serving_head.set_weights(head.get_weights())
    export_path = export.export(serving_head, backbone, labels, storage.join(output_path, "model"))
    version = int(export_path.rstrip("/").rsplit("/", 1)[-1])

    result = {
        "accuracy": eval_figures["accuracy"], "loss": eval_figures["loss"],
        "train_accuracy": train_figures["accuracy"], "train_loss": train_figures["loss"],
        "per_class": eval_figures["per_class"], "confusion_matrix": eval_figures["confusion_matrix"],
        "steps": step, "resumed_from_step": start_step, "wall_time_s": round(time.time() - started, 2),
        "backbone": backbone, "n_train": n_train, "n_eval": n_eval, "labels": labels,
        "hyperparameters": {"max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate,
                            "dropout": dropout, "hidden_units": hidden_units, "eval_every": eval_every},
        "replicas": strategy.num_replicas_in_sync, "version": version,
    }
    text = json.dumps(result, indent=2) + "\n"
    storage.write_text(storage.join(output_path, defaults.METRICS_FILE), text)
    storage.write_text(storage.join(export_path, "assets.extra", defaults.METRICS_FILE), text)
    log(f"eval accuracy {result['accuracy']:.4f}, train accuracy {result['train_accuracy']:.4f}, "
        f"{step} steps, {result['wall_time_s']} s -> {export_path}")
    return {"metrics": result, "export_path": export_path, "version": version}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="flowers train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_paths", required=True, help="PREFIX-*.tfrecord.gz of the train set")
    parser.add_argument("--eval_data_paths", required=True, help="PREFIX-*.tfrecord.gz of the eval set")
    parser.add_argument("--output_path", required=True, help="checkpoints, logs, metrics.json, model/")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--dropout", type=float, default=DROPOUT)
    parser.add_argument("--hidden_units", type=int, default=HIDDEN_UNITS)
    parser.add_argument("--eval_every", type=int, default=EVAL_EVERY,
                        help="steps between evaluations and checkpoints")
    args = parser.parse_args(argv)
    try:
        train(args.train_data_paths, args.eval_data_paths, args.output_path, max_steps=args.max_steps,
              batch_size=args.batch_size, learning_rate=args.learning_rate, dropout=args.dropout,
              hidden_units=args.hidden_units, eval_every=args.eval_every)
    except (TrainError, OSError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"flowers train: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
