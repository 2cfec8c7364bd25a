"""The fine-tuned model: the backbone (trainable past its early stages, batch norm in inference mode,
stochastic depth in training, its head's features only) under a head with the search's parameters.
No TensorFlow import, so it builds on any Keras backend (bench/finetune.py times it on a GPU machine
that has JAX or PyTorch and no TensorFlow)."""
import keras

from flowers.core import backbones
from flowers.core.backbones import efficientnet_lite
from flowers.train import head as head_lib

CROP_SCALE = 1.15  # served side / training window side
HEAD_FEATURES = 1280  # a Lite head's width: the last values of its embedding (efficientnet_lite.build)
FROZEN_STAGES = 3  # the stem and a Lite backbone's first stages (stride up to 8) keep their ImageNet weights
# Stochastic depth: in training a Lite block's residual branch is dropped for a random share of the
# samples, rising linearly with depth towards DROP_PATH (EfficientNet's own training used 0.2).
# Paired on two unseen splits each (lite0, same start head and time): 0.2 against none held out and
# validated 10 photos more of 1,544; 0.3 against 0.2 another 10, on two other splits; 0.4 against 0.3
# +4 on two more (validation only, held out level: the rule's threshold, docs/ACCURACY.md).
DROP_PATH = 0.4


def crop_size(size):
    """The side of a training window cut from an image of the served SIZE."""
    return int(round(size / CROP_SCALE))


def head_features(backbone):
    """The backbone's own head's pooled features alone: a Lite embedding's last 1280 values (its
    avg_pool layer). Fine-tuning reads only these; with the pooled stages as well, three default runs'
    winners on the shared photos scored level (docs/ACCURACY.md), and this backbone skips 4 pooling
    ops. Other backbones' embeddings are those features already."""
    if not _cut(backbone.name):
        return backbone
    return keras.Model(backbone.inputs, backbone.get_layer("avg_pool").output, name=backbone.name)


def freeze_early_stages(backbone, stages=FROZEN_STAGES):
    """Marks the stem and the first STAGES stages of a Lite backbone untrainable: generic edges and
    colours, a small share of the weights, a large share of the backward pass's work (high resolution). Epochs
    ran 26 to 42 % shorter; held out, lite0 scored +1, +2 and -4 photos on three splits, seed 3's
    winner the same (docs/ACCURACY.md): level, not a gain."""
    return efficientnet_lite.freeze_stages(backbone, stages)


def head_features_data(data):
    """Search data (embeddings) cut to what head_features gives, to train the fine-tune's first head."""
    size = HEAD_FEATURES if _cut(data["backbone"]) else data["embedding_size"]
    cut = {split: (data[split][0], data[split][1][:, -size:], data[split][2]) for split in ("fit", "val", "eval")}
    return {**data, **cut, "embedding_size": size}


def _cut(backbone_name):
    """Whether BACKBONE_NAME's embedding holds more than its head's features (the Lite family's does)."""
    return backbone_name.startswith("efficientnet_lite")


def build(backbone_name, head_params, head_weights, n_labels, frozen_stages=FROZEN_STAGES, drop_path=DROP_PATH):
    """Backbone (trainable past its first FROZEN_STAGES stages, inference-mode BN, drop path, its head's
    features) -> head initialised from HEAD_WEIGHTS (None: fresh)."""
    lite = _cut(backbone_name)
    # any_size: training windows and served images
    backbone = backbones.load(backbone_name, any_size=True, drop_path=drop_path if lite else 0.0)
    backbone = head_features(freeze_early_stages(backbone, frozen_stages) if lite else backbone)
    head = head_lib.build_head(backbone.output.shape[-1], n_labels, head_params["hidden_units"],
                               head_params["dropout"])
    if head_weights is not None:
        head.set_weights(head_weights)
    inputs = keras.Input((None, None, 3), name="image")
    # A Lite backbone's batch norm is folded into its convolutions, so Keras' training flag reaches only
    # its drop path; other backbones' batch norm layers keep their ImageNet statistics.
    features = backbone(inputs) if lite else backbone(inputs, training=False)
    model = keras.Model(inputs, head(features), name="fine_tuned")
    # The rate is set every batch by flowers.automl.finetune.BudgetSchedule.
    model.compile(optimizer=keras.optimizers.AdamW(0.0, weight_decay=head_params["weight_decay"]),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=head_params["label_smoothing"]),
                  metrics=["accuracy"])
    return model, backbone, head
