"""The lab's head on the embeddings, keras.io style: hyper-parameters first, then the model.

Rows with several labels: the target spreads evenly over them (multi-hot / k, one-hot for the
usual row), which CategoricalCrossentropy takes as is, and a prediction counts as correct when
it is any of them (`hit`, the "accuracy" metric Keras reports in fit and TensorBoard).
"""
import keras

from flowers.core import defaults

# Hyper-parameters: the lab's, defined once in flowers.core.defaults.
HIDDEN_UNITS = defaults.HIDDEN_UNITS
DROPOUT = defaults.DROPOUT
LEARNING_RATE = defaults.LEARNING_RATE  # Adam
BATCH_SIZE = defaults.BATCH_SIZE
MAX_STEPS = defaults.MAX_STEPS
EVAL_EVERY = defaults.EVAL_EVERY  # steps between evaluations, TensorBoard points and backups
SEED = 0


def build_head(embedding_size, n_labels, hidden_units=HIDDEN_UNITS, dropout=DROPOUT):
    """embedding -> Dense ReLU -> Dropout -> Dense softmax."""
    return keras.Sequential([
        keras.Input((embedding_size,), name="embedding"),
        keras.layers.Dense(hidden_units, activation="relu", name="hidden"),
        keras.layers.Dropout(dropout, name="dropout"),
        keras.layers.Dense(n_labels, activation="softmax", name="scores"),
    ], name="head")


def hit(y_true, y_pred):
    """1.0 where the top-scored class is one of the row's labels (target > 0), else 0.0.

    Unlike CategoricalAccuracy (argmax of the target), right for rows with several labels;
    its mean is flowers.train.metrics.summarize's accuracy."""
    top = keras.ops.expand_dims(keras.ops.argmax(y_pred, axis=-1), -1)
    return keras.ops.cast(keras.ops.take_along_axis(y_true, top, axis=-1)[:, 0] > 0, "float32")


def compile_head(head, learning_rate=LEARNING_RATE):
    """Adam on the soft-target cross-entropy, with `hit` as "accuracy"; builds the optimizer
    so that a backup restores its slots and step counter at once."""
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.CategoricalCrossentropy(),
                 metrics=[keras.metrics.MeanMetricWrapper(hit, name="accuracy")])
    head.optimizer.build(head.trainable_variables)
    return head
