"""`flowers train`: the lab's head on preprocessed embeddings, its metrics, and one servable model.

Reads the gzipped TFRecords that `flowers preprocess` writes (PREFIX-*.tfrecord.gz, local or
gs://; comma-separated patterns) and their PREFIX.metadata.json (labels, backbone), trains the
head (flowers.train.head) with Model.fit, evaluating on the eval set every `eval_every` steps,
and writes under OUTPUT:

    OUTPUT/checkpoints/          BackupAndRestore's backup: the same command started again with
                                 the same OUTPUT resumes from the last evaluation
    OUTPUT/logs/{train,validation}/   TensorBoard: loss and accuracy per evaluation
    OUTPUT/history.json          the evaluations so far (kept across a resume)
    OUTPUT/metrics.json          eval and train accuracy/loss, per-class precision/recall,
                                 confusion matrix, and `history` (one entry per evaluation)
    OUTPUT/eval_predictions.jsonl  one line per eval row: uri, labels, predicted, scores
    OUTPUT/model/<version>/      the SavedModel (image bytes in, see flowers.train.export), with
                                 metrics.json and eval_predictions.jsonl in assets.extra/
"""
import json
import math
import signal
import sys
import threading
import time

import keras
import tensorflow as tf

from flowers import cli
from flowers.core import base_path, storage
from flowers.train import export, inputs, metrics, report
from flowers.train.head import (BATCH_SIZE, DROPOUT, EVAL_EVERY, HIDDEN_UNITS, LEARNING_RATE, MAX_STEPS, SEED,
                                build_head, compile_head)
from flowers.train.inputs import TrainError

HISTORY_FILE = "history.json"
HISTORY_KEYS = {"train_loss": "loss", "train_accuracy": "accuracy",
                "eval_loss": "val_loss", "eval_accuracy": "val_accuracy"}


def distribution_strategy():
    """All local GPUs when there are any, else the default (CPU) strategy."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def current_step(model):
    """The optimizer's step counter, saved and restored with the weights (int() fails on a MirroredVariable)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class InterruptBetweenSteps(keras.callbacks.Callback):
    """`flowers train` turns Ctrl-C into a request (see main) that this raises as KeyboardInterrupt at
    the next step's end, in Python: raised while TensorFlow runs C++ (restoring, tracing, the first
    step) a KeyboardInterrupt can be swallowed, and training would go on."""

    requested = threading.Event()

    def on_train_batch_end(self, batch, logs=None):
        if self.requested.is_set():
            raise KeyboardInterrupt


class StopAtStep(keras.callbacks.Callback):
    """Ends fit after exactly `max_steps` optimizer steps, also inside the last (short) epoch."""

    def __init__(self, max_steps):
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if current_step(self.model) >= self.max_steps:
            self.model.stop_training = True


class EvalHistory(keras.callbacks.Callback):
    """After each evaluation: append it to the history file (listed before BackupAndRestore, so a
    backup never gets ahead of the history) and print one line unless Keras' progress bar shows it."""

    def __init__(self, path, history, max_steps, log):
        super().__init__()
        self.path, self.history, self.max_steps, self.log = path, history, max_steps, log

    def on_epoch_end(self, epoch, logs=None):
        step = current_step(self.model)
        self.history["steps"].append(step)
        for key, name in HISTORY_KEYS.items():
            self.history[key].append(float(logs[name]))
        storage.write_text(self.path, json.dumps(self.history) + "\n")
        self.log(f"step {step}/{self.max_steps}: " + " ".join(
            f"{key} {self.history[key][-1]:.4f}" for key in HISTORY_KEYS))


def read_history(path, upto_step):
    """The saved evaluations up to the restored step (a kill may land between the two saves)."""
    history = {"steps": [], **{key: [] for key in HISTORY_KEYS}}
    if upto_step and storage.exists(path):
        saved = json.loads(storage.read_text(path))
        keep = [i for i, step in enumerate(saved["steps"]) if step <= upto_step]
        history = {key: [saved[key][i] for i in keep] for key in history}
    return history


def restore(model, backup, strategy):
    """Load the last backup (weights, optimizer slots and step) now, before fit, so that the step is
    known for the log, the shuffle seed and skipping a finished run. Returns the step."""
    try:
        with strategy.scope():
            backup.set_model(model)
            backup.on_train_begin()
    except (ValueError, OSError) as e:
        raise TrainError(f"{backup.backup_dir} does not fit this head (other labels or hidden_units?); "
                         f"use another --output_path: {str(e).splitlines()[0]}") from None
    return current_step(model)


def score(model, files, rows, embedding_size, labels, batch_size):
    """(uris, scores, targets, figures) for one ordered pass over `files`, in inference mode."""
    uris, targets = inputs.uris_and_targets(files, embedding_size, len(labels))
    scores = model.predict(inputs.make_dataset(files, embedding_size, len(labels), batch_size, rows), verbose=0)
    return uris, scores, targets, metrics.summarize(scores, targets, labels)


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

    train_files, meta = inputs.read_inputs(train_data_paths, "train")
    eval_files, eval_meta = inputs.read_inputs(eval_data_paths, "eval")
    inputs.check_metadata(meta, eval_meta)
    labels, backbone, embedding_size = meta["labels"], meta["backbone"], meta["embedding_size"]
    n_train = inputs.count_records(train_files, embedding_size, len(labels), "train")
    n_eval = inputs.count_records(eval_files, embedding_size, len(labels), "eval")
    log(f"{backbone}: {n_train} train rows, {n_eval} eval rows, {len(labels)} labels")

    strategy = strategy or distribution_strategy()
    keras.utils.set_random_seed(SEED)
    with strategy.scope():
        model = compile_head(build_head(embedding_size, len(labels), hidden_units, dropout), learning_rate)
    # Kept after training (delete_checkpoint=False): a finished run started again trains no more.
    # double_checkpoint: a kill while the backup is written leaves the previous one to resume from.
    backup = keras.callbacks.BackupAndRestore(storage.join(output_path, "checkpoints"),
                                              double_checkpoint=True, delete_checkpoint=False)
    start_step = restore(model, backup, strategy)
    if start_step:
        log(f"resuming from step {start_step} ({backup.backup_dir})")
    history_path = storage.join(output_path, HISTORY_FILE)
    history = read_history(history_path, start_step)

    eval_ds = inputs.make_dataset(eval_files, embedding_size, len(labels), batch_size, n_eval)
    if start_step < max_steps:
        # A resumed run shuffles with another seed, so it does not replay the batches already seen.
        train_ds = inputs.make_dataset(train_files, embedding_size, len(labels), batch_size, n_train,
                                       shuffle_seed=SEED + start_step)
        progress_bar = verbose and sys.stdout.isatty()
        model.fit(train_ds, validation_data=eval_ds, steps_per_epoch=eval_every,
                  epochs=math.ceil(max_steps / eval_every), initial_epoch=start_step // eval_every,
                  shuffle=False, verbose=1 if progress_bar else 0,  # train_ds is shuffled
                  callbacks=[InterruptBetweenSteps(), StopAtStep(max_steps),
                             EvalHistory(history_path, history, max_steps,
                                         (lambda msg: None) if progress_bar else log),
                             backup,
                             keras.callbacks.TensorBoard(storage.join(output_path, "logs"))])
    step = current_step(model)

    # Final figures, train set in inference mode (no dropout) like the eval set.
    _, _, _, train_figures = score(model, train_files, n_train, embedding_size, labels, batch_size)
    uris, eval_scores, eval_targets, eval_figures = score(model, eval_files, n_eval, embedding_size, labels,
                                                          batch_size)

    # Export a plain (non-distributed) copy of the head with the backbone in front of it.
    serving_head = build_head(embedding_size, len(labels), hidden_units, dropout)
    serving_head.set_weights(model.get_weights())
    export_path = export.export(serving_head, backbone, labels, storage.join(output_path, "model"))
    version = base_path.version_of(export_path)

    result = {
        "accuracy": eval_figures["accuracy"], "loss": eval_figures["loss"],
        "train_accuracy": train_figures["accuracy"], "train_loss": train_figures["loss"],
        "per_class": eval_figures["per_class"], "confusion_matrix": eval_figures["confusion_matrix"],
        "steps": step, "resumed_from_step": start_step, "wall_time_s": round(time.time() - started, 2),
        "backbone": backbone, "n_train": n_train, "n_eval": n_eval, "labels": labels,
        "hyperparameters": {"max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate,
                            "dropout": dropout, "hidden_units": hidden_units, "eval_every": eval_every},
        "replicas": strategy.num_replicas_in_sync, "version": version, "history": history,
    }
    report.write_evaluation(output_path, export_path, result,
                            metrics.prediction_lines(uris, eval_scores, eval_targets, labels))
    log(f"eval accuracy {result['accuracy']:.4f}, train accuracy {result['train_accuracy']:.4f}, "
        f"{step} steps, {result['wall_time_s']} s -> {export_path}")
    log(f"next: flowers deploy --model_dir {storage.join(output_path, 'model')} --model_base_path BASE_PATH")
    return {"metrics": result, "export_path": export_path, "version": version}


def main(argv=None):
    parser = cli.ArgumentParser(prog="flowers train", description=__doc__)
    parser.add_argument("--train_data_paths", required=True,
                        help="comma-separated PREFIX-*.tfrecord.gz patterns of the train set")
    parser.add_argument("--eval_data_paths", required=True,
                        help="comma-separated PREFIX-*.tfrecord.gz patterns of the eval set")
    parser.add_argument("--output_path", required=True, help="checkpoints, logs, metrics.json, model/")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--dropout", type=float, default=DROPOUT)
    parser.add_argument("--hidden_units", type=int, default=HIDDEN_UNITS)
    parser.add_argument("--eval_every", type=int, default=EVAL_EVERY,
                        help="steps between evaluations and backups")
    args = parser.parse_args(argv)
    # Ctrl-C becomes a request that training honours at the next step's end (InterruptBetweenSteps);
    # a second Ctrl-C interrupts at once.
    def interrupt(_signum, _frame):
        if InterruptBetweenSteps.requested.is_set():
            raise KeyboardInterrupt
        InterruptBetweenSteps.requested.set()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        train(args.train_data_paths, args.eval_data_paths, args.output_path, max_steps=args.max_steps,
              batch_size=args.batch_size, learning_rate=args.learning_rate, dropout=args.dropout,
              hidden_units=args.hidden_units, eval_every=args.eval_every)
    except KeyboardInterrupt:
        print(f"\nflowers train: interrupted; run the same command again to resume from the last "
              f"evaluation saved in {storage.join(args.output_path, 'checkpoints')}", file=sys.stderr)
        return 130
    except (TrainError, OSError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"flowers train: error: {message}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
