"""Fine-tune the search's winner end to end on images: backbone + head, augmented, with a cosine
learning-rate schedule (after a warm-up) that ends by the budget's deadline, early stopping once that
schedule has cooled, the best epoch checkpointed (BestCheckpoint), resume after a kill (a finished
fine-tune is reused), on every GPU (MirroredStrategy) or the CPU, with a progress line and an ETA.

Pixels come from THE image function (flowers.core.images.decode_and_resize): validation images
go through it exactly as the served model does; training images are random windows of those same
pixels (1 / tuned_model.CROP_SCALE of each side), flipped and colour-jittered, so an object has the
same size in pixels in training as when served (the backbone is fully convolutional: it takes
either size; zoomed windows cost the winners 6 photos over four whole runs, docs/ACCURACY.md).
The model itself is built in flowers.automl.tuned_model. Batch norm keeps its ImageNet statistics
(folded into the convolutions; their weights still learn), as keras.io's fine-tuning guide recommends
for small datasets and batches; in training only the backbone's drop path (stochastic depth) acts.
"""
import csv
import io
import json
import math
import time

import keras
import numpy as np
import tensorflow as tf

from flowers.automl import search
from flowers.automl.tuned_model import build, crop_size
from flowers.core import backbones, images, storage
from flowers.train import trainer

# Hyper-parameters (the head's come from the search).
EPOCHS = 12
BATCH_SIZE = 32
LEARNING_RATE = 1e-4  # peak, reached after the warm-up, then cosine decay to 0
WARMUP = 0.1  # of the run's progress (steps or time, whichever is further along)
PATIENCE = 3  # epochs without a better validation accuracy before stopping, counted from when...
COOLED = 0.5  # ...the rate has decayed to this fraction of its peak (CooledEarlyStopping)
BRIGHTNESS, CONTRAST, SATURATION = 0.1, 0.2, 0.2  # colour jitter, on [0, 1] pixels
MIN_SECONDS = 60  # less time left than this: fine-tuning is skipped
HISTORY = "history.csv"  # every epoch's logs (Keras' CSVLogger), appended to across a resume


def read_and_decode(uri, size):
    return images.decode_and_resize(tf.io.read_file(uri), size)


def augment(image, size, seed):
    """uint8 [S', S', 3] (the served pixels) -> float [size, size, 3] in [0, 255], a random window."""
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_crop(x, [size, size, 3], seed=seed)
    x = tf.image.stateless_random_flip_left_right(x, seed=seed + 1)
    x = tf.image.stateless_random_brightness(x, BRIGHTNESS, seed=seed + 2)
    x = tf.image.stateless_random_contrast(x, 1 - CONTRAST, 1 + CONTRAST, seed=seed + 3)
    x = tf.image.stateless_random_saturation(x, 1 - SATURATION, 1 + SATURATION, seed=seed + 4)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def train_dataset(uris, targets, size, batch_size):
    """Decoded once at the served size (uint8, in memory), then augmented afresh every epoch into
    windows of crop_size(size)."""
    ds = tf.data.Dataset.from_tensor_slices((list(uris), targets))
    ds = ds.map(lambda u, y: (tf.cast(tf.round(read_and_decode(u, size)), tf.uint8), y),
                num_parallel_calls=tf.data.AUTOTUNE).cache()
    ds = ds.shuffle(len(uris), seed=search.space.SEED, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=search.space.SEED).batch(2)))
    ds = ds.map(lambda xy, s: (augment(xy[0], crop_size(size), tf.cast(s, tf.int32) % 2**30), xy[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def eval_dataset(uris, targets, size, batch_size):
    ds = tf.data.Dataset.from_tensor_slices((list(uris), targets))
    return ds.map(lambda u, y: (read_and_decode(u, size), y), num_parallel_calls=tf.data.AUTOTUNE) \
             .cache().batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict(backbone, head, uris, size, batch_size=BATCH_SIZE):
    """A fine-tuned model's scores [N, C] on THE image function's pixels of `uris`."""
    ds = eval_dataset(uris, np.zeros(len(uris), np.float32), size, batch_size).map(lambda x, y: x)
    return keras.Sequential([backbone, head]).predict(ds, verbose=0)


def rate_at(peak, progress):
    """Linear warm-up over the first WARMUP of the run, then cosine decay to 0 at its end."""
    if progress < WARMUP:
        return peak * progress / WARMUP
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


class BudgetSchedule(keras.callbacks.Callback):
    """The learning rate of every batch from the run's progress: the larger of the steps done and the
    time spent, as fractions of all steps and of the time to the deadline. A run the budget cuts short
    still decays to 0 by its deadline, instead of stopping at a high rate before its best epochs."""

    def __init__(self, peak, total_steps, deadline):
        super().__init__()
        self.peak, self.total_steps, self.deadline = peak, total_steps, deadline

    def on_train_begin(self, logs=None):
        self.started = time.time()

    def on_train_batch_begin(self, batch, logs=None):
        by_steps = int(self.model.optimizer.iterations) / self.total_steps
        by_time = (time.time() - self.started) / max(self.deadline - self.started, 1e-9)
        self.model.optimizer.learning_rate = rate_at(self.peak, max(by_steps, by_time))


class CooledEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping whose patience counts only the epochs that end at a cooled rate (at most COOLED
    of its peak). A plateau at a high rate is no sign of the end: the low-rate epochs of a cosine
    schedule are where fine-tuning gains (on the shared photos plain early stopping ended lite2 at
    epoch 6 of 12, at 0.6 of its peak rate, with 13.5 minutes of its share unspent)."""

    def __init__(self, peak, **kwargs):
        super().__init__(**kwargs)
        self.peak = peak

    def on_epoch_end(self, epoch, logs=None):
        stopping = self.model.stop_training  # the deadline (Progress) may have stopped it already
        super().on_epoch_end(epoch, logs)  # tracks the best epoch, hot or cooled
        if float(self.model.optimizer.learning_rate) > COOLED * self.peak:
            self.wait = 0
            self.model.stop_training, self.stopped_epoch = stopping, 0


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the best validated epoch: the highest val_accuracy, ties to the lower val_loss
    (one photo moves the accuracy in steps, so equal epochs are common: on the shared photos 3 of 8
    fine-tunes reached their best accuracy again at later, cooler epochs). Its record (PATH + .json)
    outlives a kill, so a resumed run keeps a better earlier epoch (ModelCheckpoint starts from -inf)."""

    def __init__(self, path):
        super().__init__()
        self.path, self.record_path, self.best = path, path + ".json", None

    def on_train_begin(self, logs=None):
        if storage.exists(self.record_path) and storage.exists(self.path):
            self.best = json.loads(storage.read_text(self.record_path))

    def on_epoch_end(self, epoch, logs=None):
        accuracy, loss = float(logs["val_accuracy"]), float(logs["val_loss"])
        if self.best is None or (accuracy, -loss) > (self.best["val_accuracy"], -self.best["val_loss"]):
            self.model.save_weights(self.path)
            self.best = {"epoch": epoch, "val_accuracy": accuracy, "val_loss": loss}
            storage.write_text(self.record_path, json.dumps(self.best) + "\n")


class Progress(keras.callbacks.Callback):
    """One line every `every` batches and per epoch, with the ETA of the whole run; stops at the deadline."""

    def __init__(self, epochs, steps, deadline, log, every=20):
        super().__init__()
        self.epochs, self.steps, self.deadline, self.log, self.every = epochs, steps, deadline, log, every
        self.started, self.done, self.epoch, self.stopped_by_deadline = time.time(), 0, 0, False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch and not self.done:  # BackupAndRestore skipped the epochs before its backup
            self.log(f"fine-tune: resumed after epoch {epoch} (its backup)")

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if time.time() > self.deadline:
            self.stopped_by_deadline = self.model.stop_training = True
            self.log(f"fine-tune: budget reached in epoch {self.epoch + 1}, batch {batch + 1}: stopping")
        elif (batch + 1) % self.every == 0:
            self.log(f"fine-tune: epoch {self.epoch + 1}/{self.epochs} batch {batch + 1}/{self.steps} "
                     f"loss {logs.get('loss', 0):.4f} {self._eta((self.epochs - self.epoch) * self.steps - batch - 1)}")

    def on_epoch_end(self, epoch, logs=None):
        if time.time() > self.deadline:  # else Keras starts another epoch: one batch, then its validation
            self.stopped_by_deadline = self.model.stop_training = True
        self.log(f"fine-tune: epoch {epoch + 1}/{self.epochs} loss {logs.get('loss', 0):.4f} "
                 f"val_accuracy {logs.get('val_accuracy', 0):.4f} {self._eta((self.epochs - epoch - 1) * self.steps)}")

    def _eta(self, batches_left):
        """Time per batch so far (validation included) times the batches left, capped by the budget."""
        left = (time.time() - self.started) / max(self.done, 1) * batches_left
        return f"ETA {left / 60:.1f} min (budget left {(self.deadline - time.time()) / 60:.1f} min)"


def fine_tune(data, head_params, head_weights, workdir, deadline, epochs=EPOCHS, batch_size=BATCH_SIZE,
              learning_rate=LEARNING_RATE, log=print, strategy=None):
    """Fine-tune on data["fit"], validate on data["val"]; resumes from WORKDIR after a kill, and a
    fine-tune that had finished there before the kill (WORKDIR/done.json) is reused, not run again.

    Returns {"backbone", "head", "val_accuracy", "val_scores", "epochs", "stopped", "history"} with plain
    (non-distributed) models holding the best validated weights, or None when no epoch could be afforded."""
    best_path, done_path = storage.join(workdir, "best.weights.h5"), storage.join(workdir, "done.json")
    if storage.exists(done_path) and storage.exists(best_path):
        done = json.loads(storage.read_text(done_path))
        log(f"fine-tune: finished before the kill ({done['epochs']} epoch(s)): its best epoch reused")
        model, backbone, head = build(data["backbone"], head_params, head_weights, len(data["labels"]))
        model.optimizer.build(model.trainable_variables)  # the file holds the optimizer's state too
        model.load_weights(best_path)
        scores = predict(backbone, head, data["val"][0], backbones.get(data["backbone"]).image_size, batch_size)
    elif deadline - time.time() < MIN_SECONDS:
        log("fine-tune: skipped, not enough budget left")
        return None
    else:
        done, backbone, head, scores = _train(data, head_params, head_weights, workdir, best_path, deadline, epochs,
                                              batch_size, learning_rate, log, strategy)
        storage.write_text(done_path, json.dumps(done) + "\n")
    val_accuracy = search.accuracy(scores, data["val"][2])
    log(f"fine-tune: {done['epochs']} epoch(s), stopped by {done['stopped']}, val accuracy {val_accuracy:.4f}")
    return {"backbone": backbone, "head": head, "val_accuracy": val_accuracy, "val_scores": scores, **done}


def _train(data, head_params, head_weights, workdir, best_path, deadline, epochs, batch_size, learning_rate, log,
           strategy=None):
    """model.fit with the callbacks above. Returns ({"epochs", "stopped", "history"}, backbone, head,
    validation scores), the models plain copies holding the best epoch's weights."""
    spec = backbones.get(data["backbone"])
    fit_uris, fit_x, fit_y = data["fit"]
    steps = -(-len(fit_uris) // batch_size)
    strategy = strategy or trainer.distribution_strategy()
    global_batch = batch_size * strategy.num_replicas_in_sync
    n_labels = len(data["labels"])
    with strategy.scope():
        model, tuned_backbone, tuned_head = build(data["backbone"], head_params, head_weights, n_labels)
    train_ds = train_dataset(fit_uris, fit_y, spec.image_size, global_batch)
    val_ds = eval_dataset(data["val"][0], data["val"][2], spec.image_size, global_batch)
    progress = Progress(epochs, steps, deadline, log)
    early = CooledEarlyStopping(learning_rate, monitor="val_accuracy", mode="max", patience=PATIENCE)
    storage.makedirs(workdir)  # CSVLogger opens its file before any callback creates the folder
    history_path = storage.join(workdir, HISTORY)
    callbacks = [
        # Before the backup: a kill between the two runs that epoch again and read_history keeps its rerun.
        keras.callbacks.CSVLogger(history_path, append=True),
        # Resume after a kill; a kill while it writes leaves the previous epoch's backup (as flowers.train).
        keras.callbacks.BackupAndRestore(storage.join(workdir, "backup"), double_checkpoint=True),
        BestCheckpoint(best_path),
        early,
        BudgetSchedule(learning_rate, epochs * steps, deadline),
        progress,
    ]
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0,
              shuffle=False)  # train_dataset shuffles; Keras would only warn that it cannot
    if storage.exists(best_path):
        model.load_weights(best_path)
    # A plain copy (outside any strategy) for export, as flowers.train does.
    _, backbone, head = build(data["backbone"], head_params, head_weights, n_labels)
    for dst, src in zip((backbone, head), (tuned_backbone, tuned_head)):
        dst.set_weights(src.get_weights())
    scores = keras.Sequential([backbone, head]).predict(val_ds.map(lambda x, y: x), verbose=0)  # cached pixels
    early_stop = 0 < early.stopped_epoch < epochs - 1  # at the last epoch, the epochs ended it anyway
    stopped = "budget" if progress.stopped_by_deadline else ("early stopping" if early_stop else "epochs")
    history = read_history(history_path)  # Keras' History would hold only the epochs since a resume
    done = {"epochs": len(history.get("val_accuracy", [])), "stopped": stopped, "history": history}
    return done, backbone, head, scores


def read_history(path):
    """{metric: one value per epoch} from the CSVLogger file, from the run's first epoch; of an epoch
    logged twice (killed after its row, before its backup, so run again) the later row."""
    rows = {}
    if storage.exists(path):
        for row in csv.DictReader(io.StringIO(storage.read_text(path))):
            rows[int(row.pop("epoch"))] = row
    keys = rows[min(rows)].keys() if rows else ()
    return {key: [float(rows[epoch][key]) for epoch in sorted(rows)] for key in keys}
