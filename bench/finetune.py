"""Fine-tuning's speed on this machine's devices: the fine-tuned model's training steps, and the frozen
backbone's embedding (preprocessing's model), in images/s.

    .venv/bin/python bench/finetune.py [--backbones efficientnet_lite0,efficientnet_lite2]
        [--batch_sizes 32,128] [--precisions float32,mixed_bfloat16] [--frozen_stages 3,0] [--steps 10]
        [--json FILE]

The model is flowers.automl.tuned_model's (backbone + head, AdamW, label smoothing), fed random
pixels at the training window's size (tuned_model.crop_size of the served size): this measures the
model and the device, not decoding (bench/preprocess.py measures that). It runs on any Keras backend
(KERAS_BACKEND): TensorFlow here; JAX or PyTorch on a GPU machine that has no TensorFlow.
Each figure is the median of three timings of --steps steps, after two warm-up steps (compilation).
It also prints what a default `flowers automl` fine-tune on the shared photos costs at that rate:
--epochs x (--fit_photos trained + --val_photos validated), and with several --frozen_stages each
one's training rate over the first's (measured side by side, in this run).
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from flowers.automl import tuned_model  # noqa: E402
from flowers.core import backbones  # noqa: E402

HEAD = {"hidden_units": 512, "dropout": 0.5, "weight_decay": 1e-4, "label_smoothing": 0.1}
N_LABELS = 5


def timed(step, steps):
    """Seconds per step: median of three runs of `steps` steps, after two warm-up steps."""
    for _ in range(2):
        step()
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            step()  # each returns host values: the device has finished
        runs.append((time.perf_counter() - start) / steps)
    return statistics.median(runs)


def measure(name, batch_size, precision, frozen_stages, steps):
    """{"train": images/s of fine-tuning steps, "embed": images/s of the frozen backbone at the served size}."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        size = backbones.get(name).image_size
        rng = np.random.default_rng(0)
        window = tuned_model.crop_size(size)
        x = rng.uniform(0, 255, (batch_size, window, window, 3)).astype("float32")
        y = np.eye(N_LABELS, dtype="float32")[rng.integers(0, N_LABELS, batch_size)]
        model, _, _ = tuned_model.build(name, HEAD, None, N_LABELS, frozen_stages)
        model.optimizer.learning_rate = 1e-4
        train = timed(lambda: model.train_on_batch(x, y), steps)
        frozen = backbones.load(name)
        served = rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
        embed = timed(lambda: frozen.predict_on_batch(served), steps)
        return {"train": batch_size / train, "embed": batch_size / embed}
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()


def devices():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch
        return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    import tensorflow as tf
    return [d.name for d in tf.config.list_logical_devices()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    parser.add_argument("--batch_sizes", default="32,128", help="32 is flowers.automl.finetune's")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--frozen_stages", default=f"{tuned_model.FROZEN_STAGES},0",
                        help=f"Lite stages kept pretrained; {tuned_model.FROZEN_STAGES} is fine-tuning's, 0 trains all")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--epochs", type=int, default=12, help="flowers.automl.finetune.EPOCHS")
    parser.add_argument("--fit_photos", type=int, default=2509, help="the shared photos' fit slice")
    parser.add_argument("--val_photos", type=int, default=443, help="the shared photos' validation slice")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    found = devices()
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, devices {found}", flush=True)
    print(f"{'backbone':<20} {'batch':>5} {'precision':<15} {'frozen':>6} {'train img/s':>11} {'x first':>7} "
          f"{'embed img/s':>11} {'fine-tune s':>11}", flush=True)
    rows = []
    for name in args.backbones.split(","):
        for batch_size in map(int, args.batch_sizes.split(",")):
            for precision in args.precisions.split(","):
                first = None
                for frozen in map(int, args.frozen_stages.split(",")):
                    row = {"backbone": name, "batch_size": batch_size, "precision": precision, "frozen_stages": frozen,
                           **measure(name, batch_size, precision, frozen, args.steps)}
                    first = first or row["train"]
                    row["train_ratio"] = row["train"] / first
                    # A default fine-tune: every epoch trains the fit slice and validates the val slice.
                    row["fine_tune_s"] = args.epochs * (args.fit_photos / row["train"] + args.val_photos / row["embed"])
                    rows.append(row)
                    print(f"{name:<20} {batch_size:>5} {precision:<15} {frozen:>6} {row['train']:>11.1f} "
                          f"{row['train_ratio']:>7.2f} {row['embed']:>11.1f} {row['fine_tune_s']:>11.0f}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"backend": keras.backend.backend(), "devices": found,
                                                       "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
