"""The fine-tuned model: the backbone (trainable, batch norm in inference mode) under the search's
head. No TensorFlow import, so it builds on any Keras backend (bench/finetune.py times it on a GPU
machine that has JAX or PyTorch and no TensorFlow)."""
import keras

from flowers.core import backbones
from flowers.train import head as head_lib

CROP_SCALE = 1.15  # served side / training window side


def crop_size(size):
    """The side of a training window cut from an image of the served SIZE."""
    return int(round(size / CROP_SCALE))


def build(backbone_name, head_params, head_weights, n_labels):
    """Backbone (trainable, inference-mode BN) -> head initialised from HEAD_WEIGHTS (None: fresh)."""
    spec = backbones.get(backbone_name)
    backbone = backbones.load(backbone_name, any_size=True)  # training windows, served images
    head = head_lib.build_head(spec.embedding_size, n_labels, head_params["hidden_units"], head_params["dropout"])
    if head_weights is not None:
        head.set_weights(head_weights)
    inputs = keras.Input((None, None, 3), name="image")
    model = keras.Model(inputs, head(backbone(inputs, training=False)), name="fine_tuned")
    # The rate is set every batch by flowers.automl.finetune.BudgetSchedule.
    model.compile(optimizer=keras.optimizers.AdamW(0.0, weight_decay=head_params["weight_decay"]),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=head_params["label_smoothing"]),
                  metrics=["accuracy"])
    return model, backbone, head
